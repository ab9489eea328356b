// tests/durable/named_pages_test.cpp — page names across restarts: recovered from the log, from a checkpoint, and
// from both with renames and deletions in between; offline readers see them; and a later version of a program,
// which creates pages in another order and adds pages and nodes, opens the directory an earlier version wrote.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "mmsb/durable.hpp"
#include "support/temp_dir.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

using testing::commit_i64;
using testing::TempDir;

DurableOptions fast() {
  DurableOptions o;
  o.sync = SyncPolicy::None;
  return o;
}

std::int64_t i64(Runtime& rt, PageId id) { return rt.read_value<std::int64_t>(id, 0); }

TEST(DurableNames, NamesAreRecoveredFromTheLogAndFromACheckpoint) {
  TempDir dir;
  PageId a, b, c, d;
  {
    DurableRuntime db(dir.path(), fast());
    Runtime& rt = db.runtime();
    a = rt.create_page("a", 8);
    b = rt.create_page("b", 8);
    db.checkpoint();  // a and b by checkpoint; the rest by the log
    c = rt.create_page("c", 8);
    d = rt.create_page(8);
    rt.rename_page(a, "alpha");  // a name from the checkpoint, changed in the log
    rt.rename_page(d, "d");
    rt.delete_page(b);
    rt.rename_page(c, "b");  // b's name, free again
    commit_i64(rt, c, 7);
  }
  DurableRuntime db(dir.path(), fast());
  Runtime& rt = db.runtime();
  EXPECT_EQ(rt.page_names(), (std::vector<std::pair<PageId, std::string>>{{a, "alpha"}, {c, "b"}, {d, "d"}}));
  EXPECT_EQ(i64(rt, *rt.find("b")), 7);
  EXPECT_EQ(rt.find("a"), std::nullopt);

  // A checkpoint of the recovered state keeps the names, and so do the offline readers.
  db.checkpoint();
  const std::unique_ptr<Runtime> offline = load_state(dir.path());
  EXPECT_EQ(offline->page_names(), rt.page_names());
}

TEST(DurableNames, HistoryShowsCreationAndRenamesWithTheirNames) {
  TempDir dir;
  PageId p;
  {
    DurableRuntime db(dir.path(), fast());
    p = db.runtime().create_page("before", 8);
    commit_i64(db.runtime(), p, 1);
    db.runtime().rename_page(p, "after");
  }
  const std::vector<PageChange> h = page_history(dir.path(), p);
  ASSERT_EQ(h.size(), 3u);
  EXPECT_EQ(h[0].kind, PageChange::Kind::Created);
  EXPECT_EQ(h[0].name, "before");
  EXPECT_EQ(h[1].kind, PageChange::Kind::Changed);
  EXPECT_EQ(h[2].kind, PageChange::Kind::Renamed);
  EXPECT_EQ(h[2].name, "after");
  EXPECT_EQ(h[2].epoch, 1u);
  EXPECT_EQ(h[2].size, 8u);
}

// Two versions of one program. Both find their pages by name (open_page) and declare only the nodes that are
// missing (has_node), so each runs on a fresh directory and on one the other wrote. Version 2 creates a new page
// before the old ones and adds a node: with pages found by creation order, it would bind every old page to the
// wrong id.
void register_functions() {
  static const bool once = [] {
    FunctionRegistry::global().register_map("names.sum", [](MapContext& c) {
      c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0) + c.input_as<std::int64_t>(1);
    });
    FunctionRegistry::global().register_map("names.scaled", [](MapContext& c) {
      c.output_as<std::int64_t>() = c.input_as<std::int64_t>(0) * c.input_as<std::int64_t>(1);
    });
    return true;
  }();
  (void)once;
}

struct Version1 {
  PageId x, y, sum;
  explicit Version1(DurableRuntime& db) {
    Runtime& rt = db.runtime();
    x = rt.open_page("x", 8);
    y = rt.open_page("y", 8);
    sum = rt.open_page("sum", 8);
    if (!db.propagator().has_node(sum)) db.propagator().derive_map(sum, {x, y}, "names.sum");
  }
};

struct Version2 {
  PageId factor, x, y, sum, scaled;
  explicit Version2(DurableRuntime& db) {
    Runtime& rt = db.runtime();
    factor = rt.open_page("factor", 8);  // new in version 2, and created first
    scaled = rt.open_page("scaled", 8);  // new too
    sum = rt.open_page("sum", 8);        // the old pages, in another order
    y = rt.open_page("y", 8);
    x = rt.open_page("x", 8);
    Propagator& prop = db.propagator();
    if (!prop.has_node(sum)) prop.derive_map(sum, {x, y}, "names.sum");
    if (!prop.has_node(scaled)) prop.derive_map(scaled, {sum, factor}, "names.scaled");
    prop.propagate();  // computes the nodes declared just now
  }
};

TEST(DurableNames, ALaterVersionOfTheProgramOpensTheDirectoryAnEarlierOneWrote) {
  register_functions();
  TempDir dir;
  {
    DurableRuntime db(dir.path(), fast());
    Version1 v1(db);
    auto txn = db.runtime().begin();
    txn.write_value<std::int64_t>(v1.x, 0, 40);
    txn.write_value<std::int64_t>(v1.y, 0, 2);
    txn.commit();
    EXPECT_EQ(i64(db.runtime(), v1.sum), 42);
    db.checkpoint();                    // stores the node
    commit_i64(db.runtime(), v1.y, 3);  // and one commit in the log after it
  }
  PageId recovered_x;
  {
    DurableRuntime db(dir.path(), fast());
    EXPECT_FALSE(db.recovery().fresh);
    EXPECT_TRUE(db.recovery().unbound_nodes.empty());
    Version2 v2(db);
    recovered_x = v2.x;
    Runtime& rt = db.runtime();
    EXPECT_EQ(i64(rt, v2.x), 40);
    EXPECT_EQ(i64(rt, v2.y), 3);
    EXPECT_EQ(i64(rt, v2.sum), 43) << "the restored node, recomputed at recovery";
    EXPECT_EQ(i64(rt, v2.scaled), 0) << "factor is still 0";
    commit_i64(rt, v2.factor, 2);
    EXPECT_EQ(i64(rt, v2.scaled), 86);
    commit_i64(rt, v2.x, 50);  // both nodes, old and new, follow
    EXPECT_EQ(i64(rt, v2.sum), 53);
    EXPECT_EQ(i64(rt, v2.scaled), 106);
    db.checkpoint();
  }
  {
    // The same version 2 on a fresh directory gives x another id: only the name ties the recovered page to x.
    TempDir fresh;
    DurableRuntime db(fresh.path(), fast());
    Version2 v2(db);
    EXPECT_NE(v2.x, recovered_x);
  }
  {
    // Version 2 again, on its own directory: everything is found, nothing declared twice.
    DurableRuntime db(dir.path(), fast());
    Version2 v2(db);
    EXPECT_EQ(v2.x, recovered_x);
    EXPECT_EQ(db.propagator().node_count(), 2u);
    EXPECT_EQ(i64(db.runtime(), v2.scaled), 106);
  }
  {
    // And version 1 still opens it: the pages it knows are there; the page and node it does not know stay.
    DurableRuntime db(dir.path(), fast());
    Version1 v1(db);
    EXPECT_EQ(i64(db.runtime(), v1.sum), 53);
    commit_i64(db.runtime(), v1.y, 4);
    EXPECT_EQ(i64(db.runtime(), v1.sum), 54);
    EXPECT_EQ(i64(db.runtime(), *db.runtime().find("scaled")), 108);
  }
}

}  // namespace
}  // namespace mmsb
