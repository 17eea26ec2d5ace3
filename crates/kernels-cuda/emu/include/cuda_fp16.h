// Emulator stand-in for CUDA's cuda_fp16.h: everything is in emu.h.
#pragma once
#include "../emu.h"
