// The `mmsb` tool and page names: dump shows names and takes them for --page, history takes a name (also one of
// a page deleted since, found in the log), and a name no page has is one clear error line.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mmsb/durable.hpp"
#include "support/temp_dir.hpp"
#include "support/test_support.hpp"
#include "tools/tool_process.hpp"

namespace mmsb {
namespace {

namespace fs = std::filesystem;
using testing::describe;
using testing::Outcome;

class NamedPagesTool : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(scratch_.path() / "scratch");
    DurableOptions o;
    o.sync = SyncPolicy::None;
    DurableRuntime db(dir(), o);
    Runtime& rt = db.runtime();
    grid_ = rt.create_page("tiles/grid", 8);
    temp_ = rt.create_page("scratch pad", 8);
    testing::commit_i64(rt, grid_, 0x1234);
    db.checkpoint();  // grid's name comes from the checkpoint, the rest from the log
    rt.rename_page(grid_, "tiles/main");
    testing::commit_i64(rt, temp_, 5);
    rt.delete_page(temp_);
    rt.delete_page(rt.create_page("brief", 8));
  }
  fs::path dir() const { return scratch_.path() / "db"; }
  Outcome mmsb(std::vector<std::string> args) {
    args.insert(args.begin(), MMSB_TOOL_BINARY);
    return testing::run_process(args, scratch_.path() / "scratch");
  }

  testing::TempDir scratch_;
  PageId grid_, temp_;
};

TEST_F(NamedPagesTool, DumpShowsNamesAndTakesANameForPage) {
  const Outcome all = mmsb({"dump", dir().string(), "--json"});
  ASSERT_EQ(all.code, 0) << describe(all);
  const nlohmann::json dump = nlohmann::json::parse(all.out);
  ASSERT_EQ(dump["pages"].size(), 1u);
  EXPECT_EQ(dump["pages"][0]["name"].get<std::string>(), "tiles/main");

  const Outcome by_name = mmsb({"dump", dir().string(), "--page", "tiles/main"});
  ASSERT_EQ(by_name.code, 0) << describe(by_name);
  EXPECT_NE(by_name.out.find("page " + grid_.to_string() + " (" + std::to_string(grid_.value()) +
                             ")  name \"tiles/main\"  size 8"),
            std::string::npos)
      << by_name.out;
  EXPECT_NE(by_name.out.find("00000000  34 12 00 00 00 00 00 00"), std::string::npos) << by_name.out;
  EXPECT_EQ(mmsb({"dump", dir().string(), "--page", grid_.to_string()}).out, by_name.out);

  const Outcome old_name = mmsb({"dump", dir().string(), "--page", "tiles/grid"});
  EXPECT_EQ(old_name.code, 2) << describe(old_name);
  EXPECT_EQ(old_name.err.rfind("mmsb: no live page is named \"tiles/grid\"", 0), 0u) << describe(old_name);
  EXPECT_EQ(old_name.err.find('\n'), old_name.err.size() - 1) << "one line";
}

TEST_F(NamedPagesTool, HistoryTakesANameAndShowsRenames) {
  const Outcome h = mmsb({"history", dir().string(), "--page", "tiles/main"});
  ASSERT_EQ(h.code, 0) << describe(h);
  // The log after the checkpoint holds only the rename (epoch and size: none seen in the log).
  EXPECT_NE(h.out.find(": 1 changes in the log"), std::string::npos) << h.out;
  EXPECT_NE(h.out.find("renamed  epoch 0  size 0  name \"tiles/main\""), std::string::npos) << h.out;

  // A page deleted since, named before the checkpoint: its name is found in the checkpoint; its history is the
  // log after it.
  const Outcome gone = mmsb({"history", dir().string(), "--page", "scratch pad", "--json"});
  ASSERT_EQ(gone.code, 0) << describe(gone);
  const nlohmann::json j = nlohmann::json::parse(gone.out);
  EXPECT_EQ(j["page"].get<std::string>(), temp_.to_string());
  ASSERT_EQ(j["changes"].size(), 2u);
  EXPECT_EQ(j["changes"][0]["kind"].get<std::string>(), "changed");
  EXPECT_EQ(j["changes"][1]["kind"].get<std::string>(), "deleted");

  // A page created and deleted after the checkpoint: its name is found in the log, with its creation.
  const Outcome brief = mmsb({"history", dir().string(), "--page", "brief", "--json"});
  ASSERT_EQ(brief.code, 0) << describe(brief);
  const nlohmann::json b = nlohmann::json::parse(brief.out);
  ASSERT_EQ(b["changes"].size(), 2u);
  EXPECT_EQ(b["changes"][0]["kind"].get<std::string>(), "created");
  EXPECT_EQ(b["changes"][0]["name"].get<std::string>(), "brief");

  const Outcome unknown = mmsb({"history", dir().string(), "--page", "nothing/here"});
  EXPECT_EQ(unknown.code, 2) << describe(unknown);
  EXPECT_EQ(unknown.err.rfind("mmsb: no page is named \"nothing/here\"", 0), 0u) << describe(unknown);
}

}  // namespace
}  // namespace mmsb
