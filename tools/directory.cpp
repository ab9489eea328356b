#include "directory.hpp"

#include <system_error>

#include "commands.hpp"

namespace mmsb::cli {
namespace {

[[noreturn]] void not_mmsb(const std::filesystem::path& dir, const Error& error) {
  throw ToolError(dir.string() + ": not an mmsb durable directory (" + error.what() + ")");
}

}  // namespace

void require_directory(const std::filesystem::path& dir) {
  std::error_code ec;
  auto status = std::filesystem::status(dir, ec);
  if (status.type() == std::filesystem::file_type::not_found) throw ToolError(dir.string() + ": no such directory");
  if (ec) throw ToolError(dir.string() + ": " + ec.message());
  if (status.type() != std::filesystem::file_type::directory) throw ToolError(dir.string() + ": not a directory");
}

OfflineOptions offline_options(const std::string& recovery_mode) {
  OfflineOptions options;
  try {
    options.recovery_mode = parse_recovery_mode(recovery_mode);
  } catch (const Error& e) {
    throw ToolError(std::string("--recovery-mode: ") + e.what());
  }
  return options;
}

void write_damage(std::ostream& out, const std::vector<DamageReport>& damage, std::string_view indent) {
  for (const DamageReport& d : damage) {
    std::string what = d.what;
    for (char& c : what) {
      if (c == '\n' || c == '\r') c = ' ';
    }
    out << indent << d.file.string() << " offset " << d.offset << ": " << what << " (" << d.bytes
        << " bytes; last good LSN " << d.last_good_lsn << ")\n";
  }
}

DirectorySummary inspect_directory(const std::filesystem::path& dir, const OfflineOptions& options) {
  require_directory(dir);
  try {
    return inspect(dir, options);
  } catch (const Error& e) {
    if (e.code() == ErrorCode::NotFound) not_mmsb(dir, e);
    throw;
  }
}

void require_mmsb_directory(const std::filesystem::path& dir) {
  require_directory(dir);
  try {
    inspect(dir);
  } catch (const Error& e) {
    if (e.code() == ErrorCode::NotFound) not_mmsb(dir, e);
    // Damage is not this check's business: the caller's own reader reports it in its own terms.
  }
}

void rethrow_for_directory(const std::filesystem::path& dir, const Error& error) {
  require_directory(dir);
  if (error.code() == ErrorCode::NotFound) require_mmsb_directory(dir);
  throw error;
}

}  // namespace mmsb::cli
