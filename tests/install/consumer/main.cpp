// Uses the installed C++ API: a page, a derived page, a durable directory.
#include <cstdio>
#include <filesystem>
#include <mmsb/mmsb.hpp>

int main(int argc, char** argv) {
  mmsb::Runtime rt;
  mmsb::Propagator prop(rt);
  auto a = rt.create_page(8), doubled = rt.create_page(8);
  prop.derive_map(doubled, {a}, [](mmsb::MapContext& c) { c.output_as<long>() = 2 * c.input_as<long>(0); });
  auto txn = rt.begin();
  txn.write_value<long>(a, 0, 21);
  txn.commit();
  const long value = rt.read_value<long>(doubled, 0);
  if (argc > 1) {
    mmsb::DurableRuntime db(argv[1]);
    db.runtime().create_page(8);
    db.checkpoint();
  }
  std::printf("consumer %ld\n", value);
  return value == 42 ? 0 : 1;
}
