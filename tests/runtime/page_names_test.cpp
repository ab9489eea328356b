// tests/runtime/page_names_test.cpp — named pages in one runtime: create, find, open, rename, delete; the naming
// rules; what the commit sink sees; that a refused or failed naming leaves no trace; and racing creators.
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "mmsb/runtime.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

using testing::error_code_of;

struct NameLog : CommitSink {
  std::vector<std::string> lines;  // "created p0:1 'x'", "renamed p0:1 'y'", "deleted p0:1"
  bool fail_next = false;
  void write(const CommitRecord& r) override {
    if (fail_next) {
      fail_next = false;
      throw Error(ErrorCode::IoError, "disk full (injected)");
    }
    for (const auto& c : r.created) lines.push_back("created " + c.id.to_string() + " '" + c.name + "'");
    for (const auto& n : r.renamed) lines.push_back("renamed " + n.id.to_string() + " '" + n.name + "'");
    for (PageId id : r.deleted) lines.push_back("deleted " + id.to_string());
  }
};

TEST(PageNames, CreateFindNameOfAndUnnamedPages) {
  Runtime rt;
  const PageId plain = rt.create_page(8);
  const PageId p = rt.create_page("particles/3", 64);
  EXPECT_EQ(rt.find("particles/3"), p);
  EXPECT_EQ(rt.name_of(p), "particles/3");
  EXPECT_EQ(rt.name_of(plain), "");
  EXPECT_EQ(rt.find("particles/4"), std::nullopt);
  EXPECT_EQ(rt.info(p).size, 64u);
  EXPECT_EQ(rt.page_names(), (std::vector<std::pair<PageId, std::string>>{{p, "particles/3"}}));
  EXPECT_EQ(error_code_of([&] { (void)rt.name_of(PageId::make(0, 99)); }), ErrorCode::NotFound);
}

TEST(PageNames, ATakenNameIsRefusedWithNoTrace) {
  Runtime rt;
  auto log = std::make_shared<NameLog>();
  rt.set_commit_sink(log);
  const PageId first = rt.create_page("grid", 8);
  const std::uint64_t lsn = rt.last_lsn(), pages = rt.page_count();
  try {
    rt.create_page("grid", 8);
    FAIL() << "a second page named grid was created";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("the name 'grid' is taken by page " + first.to_string()), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(rt.last_lsn(), lsn);
  EXPECT_EQ(rt.page_count(), pages);
  EXPECT_EQ(log->lines, (std::vector<std::string>{"created p0:1 'grid'"}));
}

TEST(PageNames, BadNamesAreRefused) {
  Runtime rt;
  for (const std::string& bad :
       {std::string(), std::string("p0:17"), std::string("17"), std::string("a\nb"), std::string(1025, 'n')}) {
    EXPECT_EQ(error_code_of([&] { rt.create_page(bad, 8); }), ErrorCode::InvalidArgument) << bad;
  }
  EXPECT_EQ(rt.page_count(), 0u);
  // Near misses of the id form are names.
  EXPECT_NO_THROW(rt.create_page("p0:x", 8));
  EXPECT_NO_THROW(rt.create_page("17a", 8));
  EXPECT_NO_THROW(rt.create_page(std::string(1024, 'n'), 8));
}

TEST(PageNames, ReservedIdsTakeNames) {
  Runtime rt;
  IdBlock block = rt.reserve_ids(2);
  const PageId id = block.next();
  EXPECT_EQ(rt.create_page(id, "tile/0", 16), id);
  EXPECT_EQ(rt.find("tile/0"), id);
}

TEST(PageNames, OpenPageCreatesOnceThenFindsAndChecksTheSize) {
  Runtime rt;
  const PageId a = rt.open_page("state", 32);
  EXPECT_EQ(rt.open_page("state", 32), a);
  EXPECT_EQ(rt.page_count(), 1u);
  try {
    rt.open_page("state", 64);
    FAIL() << "a size mismatch was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("exists with 32 bytes"), std::string::npos) << e.what();
  }
}

TEST(PageNames, RenameMovesTheNameAndLogsIt) {
  Runtime rt;
  auto log = std::make_shared<NameLog>();
  rt.set_commit_sink(log);
  const PageId p = rt.create_page("old", 8), q = rt.create_page(8);
  const std::uint64_t lsn = rt.rename_page(p, "new");
  EXPECT_EQ(lsn, rt.last_lsn());
  EXPECT_EQ(rt.find("old"), std::nullopt);
  EXPECT_EQ(rt.find("new"), p);
  EXPECT_EQ(rt.rename_page(p, "new"), 0u) << "no change, no record";
  EXPECT_EQ(error_code_of([&] { rt.rename_page(q, "new"); }), ErrorCode::InvalidArgument);
  rt.rename_page(q, "old");  // the old name is free again
  EXPECT_EQ(rt.find("old"), q);
  rt.rename_page(p, "");  // removes the name
  EXPECT_EQ(rt.name_of(p), "");
  EXPECT_EQ(rt.find("new"), std::nullopt);
  EXPECT_EQ(log->lines, (std::vector<std::string>{"created p0:1 'old'", "created p0:2 ''", "renamed p0:1 'new'",
                                                  "renamed p0:2 'old'", "renamed p0:1 ''"}));
  EXPECT_EQ(error_code_of([&] { rt.rename_page(PageId::make(0, 9), "x"); }), ErrorCode::NotFound);
}

TEST(PageNames, DeletingAPageFreesItsName) {
  Runtime rt;
  const PageId p = rt.create_page("scratch", 8);
  rt.delete_page(p);
  EXPECT_EQ(rt.find("scratch"), std::nullopt);
  const PageId again = rt.create_page("scratch", 8);
  EXPECT_NE(again, p) << "ids are never reused; names are";
  EXPECT_EQ(rt.find("scratch"), again);
}

TEST(PageNames, AFailedSinkWriteLeavesTheNameFree) {
  Runtime rt;
  auto log = std::make_shared<NameLog>();
  rt.set_commit_sink(log);
  log->fail_next = true;
  EXPECT_EQ(error_code_of([&] { rt.create_page("lost", 8); }), ErrorCode::IoError);
  EXPECT_EQ(rt.find("lost"), std::nullopt);
  const PageId p = rt.create_page("kept", 8);
  log->fail_next = true;
  EXPECT_EQ(error_code_of([&] { rt.rename_page(p, "lost"); }), ErrorCode::IoError);
  EXPECT_EQ(rt.name_of(p), "kept");
  EXPECT_NO_THROW(rt.create_page("lost", 8));
}

TEST(PageNames, RacingCreatorsOfOneNameGetOnePage) {
  for (int round = 0; round < 20; ++round) {
    Runtime rt;
    constexpr int kThreads = 4;
    std::atomic<int> created{0}, refused{0};
    std::vector<PageId> opened(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        try {
          rt.create_page("shared", 8);
          ++created;
        } catch (const Error&) {
          ++refused;
        }
        opened[static_cast<std::size_t>(t)] = rt.open_page("shared", 8);
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(created.load(), 1);
    EXPECT_EQ(refused.load(), kThreads - 1);
    for (PageId id : opened) EXPECT_EQ(id, *rt.find("shared"));
    EXPECT_EQ(rt.page_count(), 1u);
  }
}

}  // namespace
}  // namespace mmsb
