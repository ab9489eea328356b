// Named pages in distributed mode (mmsb/dist.hpp): every rank knows every page's name, each local copy (the
// owner's page and the replicas) carries it in its rank's runtime, and a restarted run checks its declarations
// against the recovered names on every rank alike. Linked into mmsb_dist_tests (main is in dist_test.cpp).
#include <mpi.h>

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "distributed/dist_support.hpp"
#include "mmsb/dist.hpp"
#include "mmsb/durable.hpp"

namespace {

using mmsb::PageId;
using mmsb::dist::DistRuntime;

std::int64_t value_of(DistRuntime& d, PageId id) {
  const std::vector<std::byte> bytes = d.fetch(id);
  std::int64_t v = 0;
  std::memcpy(&v, bytes.data(), sizeof v);
  return v;
}

void expect_invalid_argument(const std::function<void()>& f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "expected mmsb::Error(InvalidArgument) saying: " << part;
  } catch (const mmsb::Error& e) {
    EXPECT_EQ(e.code(), mmsb::ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(DistNames, EveryRankKnowsTheNamesAndARestartChecksThem) {
  static const bool registered = [] {
    mmsb::FunctionRegistry::global().register_map("dist_names.double", [](mmsb::MapContext& c) {
      c.output_as<std::int64_t>() = 2 * c.input_as<std::int64_t>(0);
    });
    return true;
  }();
  (void)registered;
  mmsb::dist::DistOptions options;
  options.propagation.threads = 1;
  options.durable_dir = mmsb::testing::shared_temp_dir("mmsb-dist-names-");
  options.durable.sync = mmsb::SyncPolicy::None;
  {
    DistRuntime d(options);
    const std::uint32_t last = d.size() - 1;
    const PageId src = d.create_page(0, "src", 8), out = d.create_page(last, "doubled", 8);
    d.derive_map(out, {src}, "dist_names.double");
    EXPECT_EQ(d.find("src"), src);
    EXPECT_EQ(d.find("doubled"), out);
    EXPECT_EQ(d.name_of(out), "doubled");
    EXPECT_EQ(d.find("nothing"), std::nullopt);
    // The local copies carry the names: the owner's page, and the replica of src on the last rank.
    if (d.owns(out)) {
      EXPECT_EQ(d.runtime().find("doubled"), out);
      EXPECT_EQ(d.runtime().name_of(d.local_id(src)), "src");
    }
    expect_invalid_argument([&] { d.create_page(last, "src", 8); }, "the name 'src' is taken by page p0:1");
    if (d.owns(src)) {
      auto txn = d.runtime().begin();
      txn.write_value<std::int64_t>(src, 0, 21);
      txn.commit();
    }
    d.propagate();
    EXPECT_EQ(value_of(d, out), 42);
    d.checkpoint();
  }
  {
    DistRuntime d(options);
    ASSERT_TRUE(d.recovered());
    const std::uint32_t last = d.size() - 1;
    const PageId src = d.create_page(0, "src", 8);
    expect_invalid_argument([&] { d.create_page(last, "renamed", 8); },
                            "gives its page 'renamed', but the recovered page of that declaration has 'doubled'");
    const PageId out = d.create_page(last, "doubled", 8);  // the declaration that matches
    d.derive_map(out, {src}, "dist_names.double");
    d.propagate();
    EXPECT_EQ(value_of(d, out), 42);
    EXPECT_EQ(d.find("doubled"), out);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) std::filesystem::remove_all(options.durable_dir);
}

}  // namespace
