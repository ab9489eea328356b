// mmsb/llm/tokenizer.hpp — SentencePiece BPE encoding and decoding as llama2.c does them.
//
// Encoding: BOS first; for non-empty text a dummy leading space (the piece " "); each UTF-8 character becomes
// its piece, or, when the vocabulary lacks it, one <0xNN> byte piece per byte (id = byte + 3); then the adjacent
// pair whose merged piece has the highest score is merged, repeatedly (the leftmost pair wins a tie), until no
// merge applies. Text that looks like a special token ("<s>") is never parsed as one.
//
// Decoding (what llama2.c prints): the piece of a token, without its leading space when the previous token is
// BOS; a <0xNN> piece is the raw byte; a single-byte piece that is neither printable nor white space prints
// nothing.
//
//   mmsb::llm::Tokenizer tok(model.vocabulary.value());
//   std::vector<int> ids = tok.encode("Once upon a time");  // {1, 403, 407, 261, 378}
//
// Thread-safety: immutable after construction; all members may be called concurrently.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mmsb/llm/model.hpp"

namespace mmsb::llm {

class Tokenizer {
 public:
  explicit Tokenizer(Vocabulary vocabulary);
  // Movable, not copyable: the lookup table views the pieces' own strings (a move keeps them where they are).
  Tokenizer(Tokenizer&&) noexcept = default;
  Tokenizer& operator=(Tokenizer&&) noexcept = default;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids of `text`, BOS first (no EOS).
  std::vector<int> encode(std::string_view text) const;
  // What llama2.c prints for `token` following `previous` (see above); may be empty.
  std::string_view decode(int previous, int token) const;

  std::size_t size() const noexcept { return vocab_.pieces.size(); }
  int bos() const noexcept { return static_cast<int>(vocab_.bos); }
  int eos() const noexcept { return static_cast<int>(vocab_.eos); }
  const std::string& piece(int token) const { return vocab_.pieces.at(static_cast<std::size_t>(token)); }

 private:
  int lookup(std::string_view piece) const;

  Vocabulary vocab_;
  std::unordered_map<std::string_view, int> ids_;  // piece → lowest id with that piece
  std::vector<std::string> byte_pieces_;           // decode(): one-byte strings for <0xNN> pieces
  std::vector<signed char> byte_of_token_;         // the byte of a <0xNN> piece (read back as unsigned char)
  std::vector<bool> is_byte_token_;
};

}  // namespace mmsb::llm
