#include "mmsb/llm/tokenizer.hpp"

#include <cctype>
#include <cstdio>

#include "mmsb/error.hpp"

namespace mmsb::llm {

namespace {

// The byte of a "<0xNN>" piece (two hex digits), or -1.
int parse_byte_piece(std::string_view p) {
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  int hi = hex(p[3]), lo = hex(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

}  // namespace

Tokenizer::Tokenizer(Vocabulary vocabulary) : vocab_(std::move(vocabulary)) {
  const std::size_t n = vocab_.pieces.size();
  if (n == 0 || vocab_.scores.size() != n) {
    throw Error(ErrorCode::InvalidArgument,
                "tokenizer: " + std::to_string(n) + " pieces but " + std::to_string(vocab_.scores.size()) + " scores");
  }
  if (vocab_.bos >= n || vocab_.eos >= n) {
    throw Error(ErrorCode::InvalidArgument, "tokenizer: BOS/EOS id outside the vocabulary of " + std::to_string(n));
  }
  ids_.reserve(n);
  for (std::size_t i = 0; i < n; ++i) ids_.emplace(vocab_.pieces[i], static_cast<int>(i));  // first id wins
  byte_pieces_.resize(256);
  for (int b = 0; b < 256; ++b) byte_pieces_[static_cast<std::size_t>(b)] = std::string(1, static_cast<char>(b));
  byte_of_token_.assign(n, 0);
  is_byte_token_.assign(n, false);
  for (std::size_t i = 0; i < n; ++i) {
    int b = parse_byte_piece(vocab_.pieces[i]);
    if (b >= 0) {
      is_byte_token_[i] = true;
      byte_of_token_[i] = static_cast<signed char>(b);
    }
  }
}

int Tokenizer::lookup(std::string_view piece) const {
  auto it = ids_.find(piece);
  return it == ids_.end() ? -1 : it->second;
}

std::vector<int> Tokenizer::encode(std::string_view text) const {
  std::vector<int> tokens;
  tokens.reserve(text.size() + 2);
  tokens.push_back(bos());
  if (!text.empty()) {
    int space = lookup(" ");
    if (space < 0) throw Error(ErrorCode::InvalidArgument, "tokenizer: the vocabulary has no \" \" piece");
    tokens.push_back(space);
  }
  const int vocab_size = static_cast<int>(size());
  // One UTF-8 character at a time: a byte plus up to three continuation bytes.
  for (std::size_t i = 0; i < text.size();) {
    std::size_t len = 1;
    while (i + len < text.size() && len < 4 && (static_cast<unsigned char>(text[i + len]) & 0xC0) == 0x80) ++len;
    int id = lookup(text.substr(i, len));
    if (id >= 0) {
      tokens.push_back(id);
    } else {
      for (std::size_t j = 0; j < len; ++j) {  // byte fallback: <0xNN> is id NN + 3
        int byte_id = static_cast<unsigned char>(text[i + j]) + 3;
        tokens.push_back(byte_id < vocab_size ? byte_id : 0);
      }
    }
    i += len;
  }
  // Merge the best-scoring adjacent pair until none merges.
  std::string merged;
  for (;;) {
    float best_score = -1e10f;
    int best_id = -1;
    std::size_t best_index = 0;
    for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
      merged = vocab_.pieces[static_cast<std::size_t>(tokens[i])];
      merged += vocab_.pieces[static_cast<std::size_t>(tokens[i + 1])];
      int id = lookup(merged);
      if (id >= 0 && vocab_.scores[static_cast<std::size_t>(id)] > best_score) {
        best_score = vocab_.scores[static_cast<std::size_t>(id)];
        best_id = id;
        best_index = i;
      }
    }
    if (best_id < 0) break;
    tokens[best_index] = best_id;
    tokens.erase(tokens.begin() + static_cast<std::ptrdiff_t>(best_index) + 1);
  }
  return tokens;
}

std::string_view Tokenizer::decode(int previous, int token) const {
  if (token < 0 || static_cast<std::size_t>(token) >= size()) return {};
  const auto t = static_cast<std::size_t>(token);
  std::string_view piece = vocab_.pieces[t];
  if (previous == bos() && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
  if (is_byte_token_[t]) piece = byte_pieces_[static_cast<unsigned char>(byte_of_token_[t])];
  if (piece.size() == 1) {
    auto c = static_cast<unsigned char>(piece[0]);
    if (!(std::isprint(c) || std::isspace(c))) return {};
  }
  return piece;
}

}  // namespace mmsb::llm
