// Applies the ranges of a sparse delta to a device buffer. The staging buffer holds a table of segments and the
// payload words; a segment covers whole 32-bit words of the target, and the masks select the bytes of its first
// and last word that belong to the range (ranges need not be word-aligned). Words covered entirely are stored;
// edge words are merged with atomics, since two ranges may share one edge word (their masks are then disjoint).
#version 450
layout(local_size_x = 64) in;

struct Segment {
  uint target_word;
  uint source_word;
  uint word_count;
  uint first_mask;
  uint last_mask;
  uint pad0;
  uint pad1;
  uint pad2;
};

layout(std430, set = 0, binding = 0) readonly buffer Staging { uint staging[]; };
layout(std430, set = 0, binding = 1) buffer Target { uint target[]; };

layout(push_constant) uniform Params {
  uint table_word;     // where the segment table starts in the staging buffer
  uint segment_count;
} params;

void main() {
  for (uint s = gl_WorkGroupID.x; s < params.segment_count; s += gl_NumWorkGroups.x) {
    const uint base = params.table_word + s * 8;
    const uint target_word = staging[base];
    const uint source_word = staging[base + 1];
    const uint count = staging[base + 2];
    const uint first_mask = staging[base + 3];
    const uint last_mask = staging[base + 4];
    for (uint i = gl_LocalInvocationID.x; i < count; i += gl_WorkGroupSize.x) {
      uint mask = 0xffffffffu;
      if (i == 0) mask &= first_mask;
      if (i == count - 1) mask &= last_mask;
      const uint value = staging[source_word + i];
      if (mask == 0xffffffffu) {
        target[target_word + i] = value;
      } else {
        atomicAnd(target[target_word + i], ~mask);
        atomicOr(target[target_word + i], value & mask);
      }
    }
  }
}
