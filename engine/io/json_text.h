// JSON text read from users (--params lines, safetensors headers): parsed
// with the reasons a user can act on, and shown back briefly in messages.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace nucleus::detail {

// Parses `text` into *out. On failure returns false and *error says where
// and why, e.g. "not valid JSON at column 11: syntax error while parsing
// value - unexpected end of input", "... number overflow parsing '1e400'",
// or "key \"top_p\" appears twice in one object" (nlohmann would keep the
// last silently; every object at every depth is checked).
bool parse_json(std::string_view text, nlohmann::json* out, std::string* error);

// Text from a file (a header, a name in it) for a one-line message: cut to
// about `max_chars` bytes ("..." then), control characters written as \n,
// \t or \xNN, and a backslash as \\ (so that neither is mistaken for the
// other).
std::string shown_text(std::string_view text, size_t max_chars = 120);

// `text` with its control characters written as \n, \t or \xNN (and, when
// `backslashes`, a backslash as \\): one line of printable text.
std::string escape_controls(std::string_view text, bool backslashes);

// A value as compact JSON text for a message, cut to about 120 characters;
// a value nested deeper than 32 levels is named, not printed (printing
// recurses once per level).
std::string json_shown(const nlohmann::json& value);

}  // namespace nucleus::detail
