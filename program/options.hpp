// program/options.hpp — the command line of every mmsb program: CLI11 parsing with one way to report a bad command
// line, numeric ranges that refuse what CLI11 alone would wrap around, and run(): parse, then the body under
// guard() (program/main.hpp).
//
//   int main(int argc, char** argv) {
//     Options opt;
//     CLI::App app{"heat_diffusion: ..."};
//     app.add_option("--steps", opt.steps, "total steps")->check(mmsb::program::range<std::uint64_t>(0, 1ull << 40));
//     return mmsb::program::run("heat_diffusion", app, argc, argv, [&] { return simulate(opt); });
//   }
//
// A bad command line is reported as `<program>: <what> (see `<program> --help`)` with exit code 2 (ExitCodes::usage).
// Option values: CLI11 2.1 reads "-1" for an unsigned 64-bit option as 2^64 - 1, so every numeric option of these
// programs states its range with range() (which refuses a sign on unsigned options) or non_negative().
//
// Header-only, used only by programs; CLI11 is heavy, so a program includes this in its main.cpp only.
// Thread-safety: call from main() only.
#pragma once

// GCC 12 at -O2 reports a "potential null pointer dereference" inside std::string as inlined into CLI11's
// detail::split(): a false positive in code that is not ours, silenced for these headers only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <CLI/CLI.hpp>
#pragma GCC diagnostic pop

#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "program/main.hpp"

namespace mmsb::program {

// An inclusive range check for a numeric option. For an unsigned type it also refuses any value written with a
// sign, which CLI11 would otherwise wrap around ("-1" as 2^64 - 1).
template <class T>
CLI::Validator range(T min, T max) {
  static_assert(std::is_arithmetic_v<T>);
  std::ostringstream bounds;
  bounds << "in [" << +min << ", " << +max << "]";
  return CLI::Validator(
      [min, max, text = bounds.str()](std::string& input) -> std::string {
        const auto first = input.find_first_not_of(" \t");
        const bool sign = first != std::string::npos && (input[first] == '-' || input[first] == '+');
        T value{};
        if ((std::is_unsigned_v<T> && sign) || !CLI::detail::lexical_cast(input, value) || value < min || value > max) {
          return "'" + input + "' is not a number " + text;
        }
        return std::string();
      },
      bounds.str(), "RANGE");
}

// Any value >= 0 of an option's type (a seed, a time limit): refuses negative numbers, which an unsigned option
// would otherwise read as huge ones.
template <class T>
CLI::Validator non_negative() {
  return range<T>(T{0}, std::numeric_limits<T>::max());
}

namespace detail {

// The command a usage error points at: `program` or `program <subcommand>`.
inline std::string help_command(std::string_view program, const CLI::App& app) {
  std::string where(program);
  const auto subs = app.get_subcommands();
  if (!subs.empty()) where += " " + subs.front()->get_name();
  return where;
}

// The message of a command line CLI11 refused; a missing or unknown subcommand names the commands there are.
inline std::string usage_message(std::string_view program, const CLI::App& app, const CLI::ParseError& e, int argc,
                                 char** argv) {
  const bool wants_command = app.get_require_subcommand_min() > 0 && app.get_subcommands().empty();
  if (wants_command) {
    std::string names;
    for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (argc > 1 && argv[1][0] != '-') {
      return "unknown command '" + std::string(argv[1]) + "'; the commands are " + names + " (see `" +
             std::string(program) + " --help`)";
    }
  }
  return std::string(e.what()) + " (see `" + help_command(program, app) + " --help`)";
}

}  // namespace detail

// Parses the command line into `app`. Returns nothing when the program should go on, or the exit code to return
// from main: 0 after printing --help, codes.usage after printing one line about a bad command line.
inline std::optional<int> parse(std::string_view program, CLI::App& app, int argc, char** argv, ExitCodes codes = {}) {
  app.name(std::string(program));
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    print_error(program, detail::usage_message(program, app, e, argc, argv));
    return codes.usage;
  }
  return std::nullopt;
}

// parse(), then guard(): the whole of a program's main after it has declared its options.
template <class Body>
int run(std::string_view program, CLI::App& app, int argc, char** argv, Body&& body, ExitCodes codes = {}) {
  if (const std::optional<int> code = parse(program, app, argc, argv, codes)) return *code;
  return guard(program, std::forward<Body>(body), codes);
}

}  // namespace mmsb::program
