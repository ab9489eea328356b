// Readers never wait for a disk (mmsb/runtime.hpp, "Visibility"): a commit whose record is on its way to the
// disk holds no lock a reader needs; it becomes visible only once durable; a later commit to the same page builds
// on it; and a failed sync fails every commit built on the failed one, leaving no trace. A test sink holds each
// record "on the way to the disk" until the test releases (or fails) it.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "mmsb/mmsb.hpp"
#include "support/test_support.hpp"

namespace mmsb {
namespace {

using namespace std::chrono_literals;
using mmsb::testing::commit_i64;
using mmsb::testing::error_code_of;

// A two-phase sink whose wait_durable() blocks until the test releases the record's LSN.
class HeldSink : public CommitSink {
 public:
  void write(const CommitRecord& record) override { wait_durable(append(record)); }
  std::uint64_t append(const CommitRecord& record) override {
    std::lock_guard lock(mutex_);
    deltas_[record.lsn].assign(record.deltas.begin(), record.deltas.end());
    appended_.push_back(record.lsn);
    cv_.notify_all();
    return record.lsn;
  }
  void wait_durable(std::uint64_t lsn) override {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return open_ || released_.count(lsn) || failed_.count(lsn); });
    if (failed_.count(lsn)) throw Error(ErrorCode::IoError, "injected sync failure of LSN " + std::to_string(lsn));
  }

  // Records appended so far (creation records pass straight through: they are released from the start).
  std::size_t appended() {
    std::lock_guard lock(mutex_);
    return appended_.size();
  }
  void wait_appended(std::size_t n) {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return appended_.size() >= n; });
  }
  std::uint64_t lsn_at(std::size_t i) {
    std::lock_guard lock(mutex_);
    return appended_.at(i);
  }
  std::vector<Delta> deltas_of(std::uint64_t lsn) {
    std::lock_guard lock(mutex_);
    return deltas_.at(lsn);
  }
  void release(std::uint64_t lsn) {
    update([&] { released_.insert(lsn); });
  }
  void fail(std::uint64_t lsn) {
    update([&] { failed_.insert(lsn); });
  }
  void open() {
    update([&] { open_ = true; });
  }
  void close() {
    update([&] { open_ = false; });
  }

 private:
  template <class F>
  void update(F&& f) {
    std::lock_guard lock(mutex_);
    f();
    cv_.notify_all();
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  bool open_ = true;
  std::vector<std::uint64_t> appended_;
  std::map<std::uint64_t, std::vector<Delta>> deltas_;
  std::set<std::uint64_t> released_, failed_;
};

struct HeldRuntime {
  Runtime rt;
  std::shared_ptr<HeldSink> sink = std::make_shared<HeldSink>();
  PageId page;
  HeldRuntime() {
    rt.set_commit_sink(sink);
    page = rt.create_page(64);
    sink->close();  // from here on every record waits for the test
  }
  ~HeldRuntime() {
    sink->open();
    rt.set_commit_sink(nullptr);
  }
  // Waits until `p`'s head (what a commit builds on: published plus in flight) is at `epoch`: the record was
  // appended and the commit joined the page's in-flight list (a moment after the sink saw it).
  void wait_head(PageId p, std::uint64_t epoch) {
    for (;;) {
      auto txn = rt.begin();
      if (txn.read_for_update(p).epoch >= epoch) return;
      std::this_thread::yield();
    }
  }
  // Commits `value` at `offset` on a thread of its own; the future yields the LSN (or the error).
  std::future<std::uint64_t> commit_async(std::uint64_t offset, std::int64_t value) {
    return std::async(std::launch::async, [this, offset, value] {
      auto txn = rt.begin();
      txn.write_value<std::int64_t>(page, offset, value);
      return txn.commit();
    });
  }
};

TEST(Visibility, ReadersSeeThePublishedStateWithoutWaitingForASyncingCommit) {
  HeldRuntime h;
  const std::size_t before = h.sink->appended();
  auto pending = h.commit_async(0, 7);
  h.sink->wait_appended(before + 1);
  h.wait_head(h.page, 1);
  // The commit's record is "on the disk's way": every reader goes on, and sees the state before it.
  EXPECT_EQ(h.rt.read_value<std::int64_t>(h.page, 0), 0);
  EXPECT_EQ(h.rt.info(h.page).epoch, 0u);
  {
    const PageId ids[] = {h.page};
    ReadView view = h.rt.read_view(ids);
    EXPECT_EQ(view.value<std::int64_t>(h.page, 0), 0);
  }
  // A transaction reads the head (what its own commit would build on), which includes the commit in flight.
  auto reader = h.rt.begin();
  EXPECT_EQ(reader.read_value<std::int64_t>(h.page, 0), 7);
  reader.abort();
  EXPECT_EQ(pending.wait_for(20ms), std::future_status::timeout) << "the commit returned before it was durable";
  h.sink->release(h.sink->lsn_at(before));
  const std::uint64_t lsn = pending.get();
  EXPECT_EQ(lsn, h.sink->lsn_at(before));
  EXPECT_EQ(h.rt.read_value<std::int64_t>(h.page, 0), 7) << "a commit that returned must be visible";
  EXPECT_EQ(h.rt.info(h.page).epoch, 1u);
}

TEST(Visibility, ALaterCommitToTheSamePageBuildsOnTheEarlierOneBeforeEitherIsVisible) {
  HeldRuntime h;
  const std::size_t before = h.sink->appended();
  auto first = h.commit_async(0, 1);
  h.sink->wait_appended(before + 1);
  h.wait_head(h.page, 1);
  auto second = h.commit_async(8, 2);  // does not wait for the first one's sync: both share it
  h.sink->wait_appended(before + 2);
  h.wait_head(h.page, 2);
  const std::uint64_t lsn1 = h.sink->lsn_at(before), lsn2 = h.sink->lsn_at(before + 1);
  ASSERT_LT(lsn1, lsn2);
  const std::vector<Delta> d2 = h.sink->deltas_of(lsn2);
  ASSERT_EQ(d2.size(), 1u);
  EXPECT_EQ(d2[0].base_epoch, 1u) << "the second commit must build on the first, not on the published state";
  EXPECT_EQ(h.rt.read_value<std::int64_t>(h.page, 0), 0);
  EXPECT_EQ(h.rt.read_value<std::int64_t>(h.page, 8), 0);
  // The second one's sync completes first; it still becomes visible only after the first.
  h.sink->release(lsn2);
  EXPECT_EQ(second.wait_for(20ms), std::future_status::timeout);
  EXPECT_EQ(h.rt.read_value<std::int64_t>(h.page, 8), 0);
  h.sink->release(lsn1);
  EXPECT_EQ(first.get(), lsn1);
  EXPECT_EQ(second.get(), lsn2);
  EXPECT_EQ(h.rt.read_value<std::int64_t>(h.page, 0), 1);
  EXPECT_EQ(h.rt.read_value<std::int64_t>(h.page, 8), 2);
  EXPECT_EQ(h.rt.info(h.page).epoch, 2u);
}

TEST(Visibility, AFailedSyncFailsTheCommitsBuiltOnItAndLeavesNoTrace) {
  HeldRuntime h;
  const std::size_t before = h.sink->appended();
  auto first = h.commit_async(0, 1);
  h.sink->wait_appended(before + 1);
  h.wait_head(h.page, 1);
  auto second = h.commit_async(8, 2);
  h.sink->wait_appended(before + 2);
  h.wait_head(h.page, 2);
  const std::uint64_t lsn1 = h.sink->lsn_at(before), lsn2 = h.sink->lsn_at(before + 1);
  h.sink->release(lsn2);  // even a sink that says the second one is durable cannot make it visible alone
  h.sink->fail(lsn1);
  EXPECT_EQ(error_code_of([&] { first.get(); }), ErrorCode::IoError);
  EXPECT_EQ(error_code_of([&] { second.get(); }), ErrorCode::Conflict) << "built on a commit that did not happen";
  EXPECT_EQ(h.rt.read_value<std::int64_t>(h.page, 0), 0);
  EXPECT_EQ(h.rt.read_value<std::int64_t>(h.page, 8), 0);
  EXPECT_EQ(h.rt.info(h.page).epoch, 0u);
  // The page's in-flight chain is empty again: the next commit builds on the published state.
  h.sink->open();
  const std::uint64_t lsn3 = h.commit_async(16, 3).get();
  EXPECT_GT(lsn3, lsn2);
  EXPECT_EQ(h.rt.info(h.page).epoch, 1u);
  EXPECT_EQ(h.rt.read_value<std::int64_t>(h.page, 16), 3);
}

TEST(Visibility, AReadModifyWriteBuildsOnAnInFlightCommitAndPublishesAfterIt) {
  HeldRuntime h;
  const std::size_t before = h.sink->appended();
  auto pending = h.commit_async(0, 10);
  h.sink->wait_appended(before + 1);
  h.wait_head(h.page, 1);
  // A plain reader sees the published 0; a transaction reads the head, 10, the state its commit builds on.
  EXPECT_EQ(h.rt.read_value<std::int64_t>(h.page, 0), 0);
  auto increment = std::async(std::launch::async, [&] {
    return h.rt.transact([&](Transaction& txn) {
      txn.write_value<std::int64_t>(h.page, 0, txn.read_value<std::int64_t>(h.page, 0) + 1);
    });
  });
  h.sink->wait_appended(before + 2);  // appended without waiting for the first one's sync: they share it
  h.wait_head(h.page, 2);
  const std::uint64_t lsn1 = h.sink->lsn_at(before), lsn2 = h.sink->lsn_at(before + 1);
  EXPECT_EQ(h.rt.read_value<std::int64_t>(h.page, 0), 0);
  h.sink->release(lsn2);
  EXPECT_EQ(increment.wait_for(20ms), std::future_status::timeout) << "published before the commit it read";
  h.sink->release(lsn1);
  EXPECT_EQ(pending.get(), lsn1);
  EXPECT_EQ(increment.get(), lsn2);
  EXPECT_EQ(h.rt.read_value<std::int64_t>(h.page, 0), 11);
  EXPECT_EQ(h.rt.info(h.page).epoch, 2u);
}

TEST(Visibility, ATransactionThatReadAnInFlightCommitFailsWithItAndItsRetryReadsWhatIsLeft) {
  HeldRuntime h;
  h.sink->open();  // page creation waits for its record too
  const PageId other = h.rt.create_page(8);
  h.sink->close();
  const std::size_t before = h.sink->appended();
  auto pending = h.commit_async(0, 10);
  h.sink->wait_appended(before + 1);
  h.wait_head(h.page, 1);
  const std::uint64_t lsn1 = h.sink->lsn_at(before);
  int attempts = 0;
  auto copy = std::async(std::launch::async, [&] {
    return h.rt.transact([&](Transaction& txn) {  // reads the in-flight page, writes another one
      ++attempts;
      txn.write_value<std::int64_t>(other, 0, txn.read_value<std::int64_t>(h.page, 0) + 1);
    });
  });
  h.sink->wait_appended(before + 2);
  h.wait_head(other, 1);
  h.sink->release(h.sink->lsn_at(before + 1));
  h.sink->fail(lsn1);
  EXPECT_EQ(error_code_of([&] { pending.get(); }), ErrorCode::IoError);
  h.sink->open();
  EXPECT_GT(copy.get(), 0u);
  EXPECT_EQ(attempts, 2) << "the first attempt read 10, which never became durable";
  EXPECT_EQ(h.rt.read_value<std::int64_t>(other, 0), 1);
  EXPECT_EQ(h.rt.read_value<std::int64_t>(h.page, 0), 0);
}

TEST(Visibility, AReadOnlyTransactionWaitsForTheInFlightCommitsItRead) {
  HeldRuntime h;
  const std::size_t before = h.sink->appended();
  auto pending = h.commit_async(0, 10);
  h.sink->wait_appended(before + 1);
  h.wait_head(h.page, 1);
  auto reader = std::async(std::launch::async, [&] {
    auto txn = h.rt.begin();
    const auto v = txn.read_value<std::int64_t>(h.page, 0);
    EXPECT_EQ(txn.commit(), 0u);
    return v;
  });
  EXPECT_EQ(reader.wait_for(20ms), std::future_status::timeout) << "reported a value not yet durable";
  h.sink->release(h.sink->lsn_at(before));
  pending.get();
  EXPECT_EQ(reader.get(), 10);
}

TEST(Visibility, DeletingAPageWaitsForItsInFlightCommits) {
  HeldRuntime h;
  const std::size_t before = h.sink->appended();
  auto pending = h.commit_async(0, 5);
  h.sink->wait_appended(before + 1);
  h.wait_head(h.page, 1);
  auto deleter = std::async(std::launch::async, [&] { h.rt.delete_page(h.page); });
  EXPECT_EQ(deleter.wait_for(20ms), std::future_status::timeout);
  EXPECT_EQ(h.rt.read_value<std::int64_t>(h.page, 0), 0) << "readers go on meanwhile";
  h.sink->open();
  EXPECT_GT(pending.get(), 0u);
  deleter.get();
  EXPECT_FALSE(h.rt.contains(h.page));
}

}  // namespace
}  // namespace mmsb
