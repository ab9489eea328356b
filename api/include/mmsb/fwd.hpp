// mmsb/fwd.hpp — forward declarations of the public types, for headers that only refer to them.
#pragma once

#include <cstdint>

namespace mmsb {

class Error;
enum class ErrorCode : int;
class PageId;
struct ByteRange;
struct Delta;
struct DiffOptions;
enum class SimdLevel : std::uint8_t;
enum class Location : std::uint8_t;
struct PageInfo;
struct CommitRecord;
class CommitSink;
struct RuntimeOptions;
class IdBlock;
class ReadView;
class Runtime;
class Transaction;
class Propagator;
struct PropagatorOptions;
class MapContext;
struct IncrementalContext;
class NodeError;

}  // namespace mmsb
