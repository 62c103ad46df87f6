// What the CUDA runtime can see. Only compiled when CMake finds a CUDA compiler.
#pragma once

#include <string>

namespace cellsynth::cuda {

// Number of usable CUDA devices; 0 when no driver or device is present (never throws).
int device_count();

// "NAME (sm_XY)" of device `index`, or an empty string when it cannot be queried.
std::string device_name(int index);

}  // namespace cellsynth::cuda
