// serialize/log.hpp — the durable transaction log: segment files of framed commit records (internal).
//
// The log is split by concern:
//   log_format.hpp  the bytes: segment headers, framed records, the damage classifier (scan_segment)
//   log_reader.hpp  LogReader: reads a directory back under a DamagePolicy
//   log_writer.hpp  LogWriter: a CommitSink appending records, with group commit and the sync policies
// The on-disk format and the damage rules are specified in docs/formats.md.
#pragma once

#include "serialize/log_format.hpp"
#include "serialize/log_reader.hpp"
#include "serialize/log_writer.hpp"
