// Uses every installed component: core (pages, transactions), graph (a derived page), durable (a directory and its
// recovery), gpu (a device node, on the CPU fallback when run with MMSB_VULKAN_DEVICE=none) and dist (a DistRuntime,
// run by the test as one MPI rank). Prints one line per component; exits 1 on a wrong result.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <mmsb/dist.hpp>
#include <mmsb/mmsb.hpp>
#include <mmsb/version.hpp>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "consumer: wrong result: %s\n", what);
    ++failures;
  }
}

// core + graph: a derived page.
void check_graph() {
  mmsb::Runtime rt;
  mmsb::Propagator prop(rt);
  auto a = rt.create_page(8), doubled = rt.create_page(8);
  prop.derive_map(doubled, {a}, [](mmsb::MapContext& c) { c.output_as<long>() = 2 * c.input_as<long>(0); });
  auto txn = rt.begin();
  txn.write_value<long>(a, 0, 21);
  txn.commit();
  const long value = rt.read_value<long>(doubled, 0);
  std::printf("graph %ld\n", value);
  expect(value == 42, "derived page");
}

// durable: write, then reopen and recover.
void check_durable(const std::filesystem::path& dir) {
  mmsb::FunctionRegistry::global().register_map(
      "consumer.double", [](mmsb::MapContext& c) { c.output_as<long>() = 2 * c.input_as<long>(0); });
  {
    mmsb::DurableRuntime db(dir / "durable");
    auto a = db.runtime().create_page(8), doubled = db.runtime().create_page(8);
    db.propagator().derive_map(doubled, {a}, "consumer.double");
    db.checkpoint();
    auto txn = db.runtime().begin();
    txn.write_value<long>(a, 0, 50);
    txn.commit();
  }
  {
    mmsb::DurableRuntime db(dir / "durable");
    const auto ids = db.runtime().page_ids();
    const long value = ids.size() == 2 ? db.runtime().read_value<long>(ids[1], 0) : -1;
    std::printf("durable %ld after recovering %llu records\n", value,
                static_cast<unsigned long long>(db.recovery().records_replayed));
    expect(value == 100, "recovered derived page");
  }
}

// gpu: one stencil step of a 4x4 grid holding a single hot cell.
void check_gpu() {
  mmsb::Runtime rt;
  mmsb::Propagator prop(rt);
  mmsb::GpuMirror gpu(rt, prop);
  auto grid = rt.create_page(16 * 4, mmsb::Location::Both), next = rt.create_page(16 * 4, mmsb::Location::Both);
  gpu.derive_stencil5(next, grid, {4, 4, 1});
  auto txn = rt.begin();
  txn.write_value<std::int32_t>(grid, 5 * 4, 1 << 20);
  txn.commit();
  const std::vector<std::byte> bytes = rt.read_all(next);
  std::int64_t sum = 0;
  for (std::size_t i = 0; i < bytes.size(); i += 4) {
    std::int32_t cell;
    std::memcpy(&cell, bytes.data() + i, 4);
    sum += cell;
  }
  std::printf("gpu backend %s, stencil sum %lld\n", gpu.backend() == mmsb::GpuBackend::Cpu ? "cpu" : "vulkan",
              static_cast<long long>(sum));
  expect(sum > 0, "stencil output");
}

// dist: one rank (the test starts this program under mpiexec -n 1).
void check_dist() {
  mmsb::dist::DistRuntime d;
  auto src = d.create_page(0, 8), out = d.create_page(d.size() - 1, 8);
  d.derive_map(out, {src}, "consumer.double");  // registered by check_durable()
  if (d.owns(src)) {
    auto txn = d.runtime().begin();
    txn.write_value<long>(src, 0, 4);
    txn.commit();
  }
  d.propagate();
  const std::vector<std::byte> bytes = d.fetch(out);
  long value = 0;
  std::memcpy(&value, bytes.data(), sizeof value);
  std::printf("dist %ld on %u rank(s)\n", value, d.size());
  expect(value == 8, "distributed derived page");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer DIR\n");
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  std::printf("version %s %s\n", MMSB_VERSION_STRING, mmsb::library_version());
  expect(std::strcmp(MMSB_VERSION_STRING, mmsb::library_version()) == 0, "header and library versions differ");

  check_graph();
  check_durable(dir);
  check_gpu();
  check_dist();
  return failures == 0 ? 0 : 1;
}
