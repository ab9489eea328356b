// bank: concurrent money transfers between accounts in multi-page transactions, logged durably, and recovered
// after a crash (kill -9 it at any moment and run it again: no committed transfer is lost, no money appears).
//
// Each account is one page holding a little-endian int64 balance. Worker threads move random amounts between two
// random accounts: read both through the transaction, stage both writes, and commit with Runtime::transact(),
// which runs the transfer again when another one changed either account in between (ErrorCode::Conflict). With
// --log the runtime is a DurableRuntime: a commit is durable once it is in the log, checkpoints
// (--checkpoint-every) compact the log, and restarting on the same directory recovers the newest checkpoint plus
// the log after it.

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <mmsb/mmsb.hpp>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "program/memory.hpp"
#include "program/options.hpp"

namespace {

using mmsb::PageId;
using mmsb::program::non_negative;
using mmsb::program::range;

constexpr std::int64_t kInitialBalance = 1000;
constexpr std::uint64_t kBalanceBytes = sizeof(std::int64_t);
constexpr std::uint64_t kMaxAccounts = std::uint64_t{1} << 20;
constexpr std::uint64_t kMaxTransfers = std::uint64_t{1} << 40;  // days of work: anything larger is a typo

struct Options {
  std::string log;  // empty: in memory
  std::uint64_t accounts = 16;
  std::uint64_t transfers = 10000;
  unsigned threads = 4;
  std::string sync = "every-commit";
  std::uint64_t seed = 0;
  std::uint64_t checkpoint_every = 0;         // transfers between checkpoints; 0: never
  std::uint64_t segment_bytes = 64ull << 20;  // log segment size
};

// Balances are stored little-endian whatever the host's byte order, so a log can move between machines.
std::array<std::byte, kBalanceBytes> encode_balance(std::int64_t value) {
  std::array<std::byte, kBalanceBytes> out{};
  auto u = static_cast<std::uint64_t>(value);
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::byte>((u >> (8 * i)) & 0xff);
  return out;
}

std::int64_t decode_balance(std::span<const std::byte> bytes) {
  std::uint64_t u = 0;
  for (std::size_t i = 0; i < kBalanceBytes; ++i)
    u |= std::uint64_t{std::to_integer<std::uint8_t>(bytes[i])} << (8 * i);
  return static_cast<std::int64_t>(u);
}

// One line at a time to stdout, flushed at once, so a reader of a killed process sees every line it printed.
class Printer {
 public:
  void line(std::string_view what, std::uint64_t value) {
    std::lock_guard lock(mutex_);
    std::fprintf(stdout, "%.*s %llu\n", static_cast<int>(what.size()), what.data(),
                 static_cast<unsigned long long>(value));
    std::fflush(stdout);
  }
  void line(std::string_view what, std::int64_t value) {
    std::lock_guard lock(mutex_);
    std::fprintf(stdout, "%.*s %lld\n", static_cast<int>(what.size()), what.data(), static_cast<long long>(value));
    std::fflush(stdout);
  }

 private:
  std::mutex mutex_;
};

std::int64_t total_balance(const mmsb::Runtime& rt, const std::vector<PageId>& accounts) {
  mmsb::ReadView view = rt.read_view(accounts);  // one instant across all accounts
  std::int64_t sum = 0;
  for (PageId id : accounts) sum += decode_balance(view.bytes(id));
  return sum;
}

// Moves a random amount between two random accounts; returns the commit's LSN.
std::uint64_t transfer(mmsb::Runtime& rt, const std::vector<PageId>& accounts, std::mt19937_64& rng) {
  std::uniform_int_distribution<std::size_t> pick(0, accounts.size() - 1);
  std::uniform_int_distribution<std::int64_t> amount_dist(1, 100);
  for (;;) {
    PageId from = accounts[pick(rng)];
    PageId to = accounts[pick(rng)];
    if (from == to) continue;
    const std::int64_t wanted = amount_dist(rng);
    bool moved = false;
    // Reads through the transaction are validated at commit: if another transfer changed either account since
    // they were read, the commit fails with ErrorCode::Conflict and transact() runs this again with fresh reads.
    const std::uint64_t lsn = rt.transact([&](mmsb::Transaction& txn) {
      txn.set_intent("transfer");
      const std::int64_t from_balance = decode_balance(txn.read_all(from));
      const std::int64_t to_balance = decode_balance(txn.read_all(to));
      const std::int64_t amount = std::min(wanted, from_balance);
      moved = amount > 0;
      if (!moved) return;  // an empty account: commit nothing, pick another pair
      txn.write(from, 0, encode_balance(from_balance - amount));
      txn.write(to, 0, encode_balance(to_balance + amount));
    });
    if (moved) return lsn;
  }
}

// The runtime the bank runs on (durable or in memory) and how it reports durable commits.
class Bank {
 public:
  // Durable: the directory is recovered (newest checkpoint, then the log after it) before anything else happens.
  explicit Bank(const Options& opt)
      : opt_(opt), durable_(!opt.log.empty()), sync_each_(durable_ && opt.sync == "every-commit") {
    if (!durable_) {
      in_memory_ = std::make_unique<mmsb::Runtime>();
      return;
    }
    mmsb::DurableOptions options;
    options.sync = opt.sync == "none"       ? mmsb::SyncPolicy::None
                   : opt.sync == "interval" ? mmsb::SyncPolicy::Interval
                                            : mmsb::SyncPolicy::EveryCommit;
    options.segment_bytes = opt.segment_bytes;
    db_ = std::make_unique<mmsb::DurableRuntime>(opt.log, options);
    out_.line("recovered", db_->recovery().last_lsn);
  }

  mmsb::Runtime& runtime() { return durable_ ? db_->runtime() : *in_memory_; }
  Printer& out() { return out_; }

  // First start (or a crash before the accounts were funded): creates the missing pages and funds them all in one
  // transaction. Funding moves every page from epoch 0 to 1, so a page at epoch 0 means it has not happened.
  // Returns the accounts.
  std::vector<PageId> open_accounts() {
    mmsb::Runtime& rt = runtime();
    std::vector<PageId> accounts = rt.page_ids();  // bank creates nothing but accounts, in id order
    const bool funded = !accounts.empty() && rt.info(accounts.front()).epoch > 0;
    if (funded) {
      if (accounts.size() != opt_.accounts) {
        std::fprintf(stderr, "bank: the log holds %zu accounts; ignoring --accounts %llu\n", accounts.size(),
                     static_cast<unsigned long long>(opt_.accounts));
      }
      return accounts;
    }
    std::vector<std::uint64_t> pending;
    while (accounts.size() < opt_.accounts) {
      accounts.push_back(rt.create_page(kBalanceBytes));
      pending.push_back(rt.last_lsn());  // no other thread commits yet
    }
    auto fund = rt.begin();
    fund.set_intent("open accounts");
    for (PageId id : accounts) {
      fund.expect_epoch(id, 0);
      fund.write(id, 0, encode_balance(kInitialBalance));
    }
    pending.push_back(fund.commit());
    report_durable(pending);
    return accounts;
  }

  // Runs --transfers transfers on --threads threads; false when one of them failed (reported on stderr).
  bool transfer_all(const std::vector<PageId>& accounts) {
    std::atomic<bool> failed{false};
    std::atomic<std::uint64_t> transfers_done{0};
    std::vector<std::thread> workers;
    for (unsigned t = 0; t < opt_.threads; ++t) {
      const std::uint64_t share = opt_.transfers / opt_.threads + (t < opt_.transfers % opt_.threads ? 1 : 0);
      workers.emplace_back([&, t, share] {
        std::seed_seq seq{opt_.seed, std::uint64_t{t}};
        std::mt19937_64 rng(seq);
        std::vector<std::uint64_t> pending;
        try {
          for (std::uint64_t i = 0; i < share && !failed.load(std::memory_order_relaxed); ++i) {
            pending.push_back(transfer(runtime(), accounts, rng));
            if (sync_each_ || pending.size() >= 64) report_durable(pending);
            if (durable_ && opt_.checkpoint_every > 0 &&
                (transfers_done.fetch_add(1, std::memory_order_relaxed) + 1) % opt_.checkpoint_every == 0) {
              out_.line("checkpoint", db_->checkpoint().lsn);
            }
          }
          report_durable(pending);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "bank: transfer failed: %s\n", e.what());
          failed = true;
        }
      });
    }
    for (auto& w : workers) w.join();
    return !failed;
  }

 private:
  // A commit is durable when commit() returns under every-commit; under none and interval we do not know when
  // the OS or the background thread made it durable, so each worker calls sync() every 64 transfers and reports
  // then.
  void report_durable(std::vector<std::uint64_t>& pending) {
    if (!durable_ || pending.empty()) return;
    if (!sync_each_) db_->sync();
    for (std::uint64_t lsn : pending) out_.line("committed", lsn);
    pending.clear();
  }

  const Options& opt_;
  const bool durable_;
  const bool sync_each_;
  Printer out_;
  std::unique_ptr<mmsb::DurableRuntime> db_;
  std::unique_ptr<mmsb::Runtime> in_memory_;
};

int run(const Options& opt) {
  Bank bank(opt);
  const std::vector<PageId> accounts = bank.open_accounts();
  const std::int64_t expected = static_cast<std::int64_t>(accounts.size()) * kInitialBalance;
  const bool ok = bank.transfer_all(accounts);
  const std::int64_t total = total_balance(bank.runtime(), accounts);
  bank.out().line("total", total);
  if (total != expected) {
    std::fprintf(stderr, "bank: total %lld differs from the %lld opened with: money was %s\n",
                 static_cast<long long>(total), static_cast<long long>(expected),
                 total > expected ? "created" : "lost");
    return 1;
  }
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  opt.seed = std::random_device{}();
  CLI::App app{
      "bank: threads transfer money between accounts (one page each) in two-page transactions; the total never "
      "changes.\nWith --log every commit is logged, `committed <lsn>` is printed once it is durable, and a restart "
      "on the same directory recovers the log first (`recovered <lsn>`). The last line is `total <sum>`.\n"
      "Exit status: 0 when the total is conserved, 1 otherwise (or on an error), 2 on bad options."};
  app.add_option("--log", opt.log,
                 "log directory; created if missing, recovered if it holds a log "
                 "(without it the bank runs in memory only)");
  app.add_option("--accounts", opt.accounts, "accounts opened at first start, 1000 each")
      ->capture_default_str()
      ->check(range<std::uint64_t>(2, kMaxAccounts));
  app.add_option("--transfers", opt.transfers, "transfers to run in total (0: only recover and check)")
      ->capture_default_str()
      ->check(range<std::uint64_t>(0, kMaxTransfers));
  app.add_option("--threads", opt.threads, "worker threads")->capture_default_str()->check(range(1u, 1024u));
  app.add_option("--sync", opt.sync,
                 "every-commit: fdatasync before each commit returns; none: leave flushing to the OS; interval: "
                 "a background thread syncs every 10 ms. Under none and interval each thread also syncs every 64 "
                 "transfers and only then prints them as committed (a crash may lose later ones, never those)")
      ->capture_default_str()
      ->check(CLI::IsMember({"every-commit", "none", "interval"}));
  app.add_option("--seed", opt.seed, "seed of the transfer choices (default: random)")
      ->check(non_negative<std::uint64_t>());
  app.add_option("--checkpoint-every", opt.checkpoint_every,
                 "with --log: write a checkpoint after every N transfers (printing `checkpoint <lsn>`), which "
                 "deletes the log segments it covers; 0: never")
      ->capture_default_str()
      ->check(range<std::uint64_t>(0, kMaxTransfers));
  app.add_option("--segment-bytes", opt.segment_bytes, "with --log: size at which a log segment is closed")
      ->capture_default_str()
      ->check(range<std::uint64_t>(64, std::uint64_t{1} << 40));
  return mmsb::program::run("bank", app, argc, argv, [&] {
    // An account costs about 0.7 KiB (peak RSS with 262144 accounts: 170 MiB), counted as 1 KiB.
    mmsb::program::require_memory(std::to_string(opt.accounts) + " accounts",
                                  opt.accounts * 1024 + (std::uint64_t{64} << 20), "use fewer --accounts");
    std::fprintf(stderr, "bank: seed %llu\n", static_cast<unsigned long long>(opt.seed));
    return run(opt);
  });
}
