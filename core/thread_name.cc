#include "core/thread_name.h"

#include <pthread.h>

#include <string>

namespace ferry {

void SetThreadName(std::string_view name) {
  std::string n(name.substr(0, 15));
  pthread_setname_np(pthread_self(), n.c_str());
}

void SetThreadName(std::string_view prefix, uint64_t index) {
  SetThreadName(std::string(prefix) + std::to_string(index));
}

}  // namespace ferry
