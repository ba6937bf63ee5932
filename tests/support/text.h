// Small string helpers for test assertions on ferry's output.
#pragma once

#include <algorithm>
#include <cctype>
#include <string>

namespace ferry::test {

inline bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

inline std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// The port of a "tcp:127.0.0.1:PORT" URI (a ready file's content), -1 for
// anything else.
inline int PortOf(const std::string& uri) {
  const size_t colon = uri.rfind(':');
  if (!uri.starts_with("tcp:127.0.0.1:") || colon == std::string::npos) return -1;
  return std::stoi(uri.substr(colon + 1));
}

}  // namespace ferry::test
