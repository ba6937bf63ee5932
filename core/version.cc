#include "ferry/version.h"

namespace ferry {

const char* Version() { return FERRY_VERSION_STRING; }

}  // namespace ferry
