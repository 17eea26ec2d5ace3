// Turbine's CUDA emulator, host side: what the driver and cuBLASLt stand-ins share.
#pragma once
#include <functional>
#include <string>

#include "emu.h"

namespace emu {

/// Runs `k` over the grid, block after block. False with `err` set on a bad geometry or a block
/// whose threads cannot finish (see `run_block`).
bool launch(const Kernel* k, uint3 grid, uint3 block, void** params, std::string* err);

/// The compute capability the device reports (`major * 10 + minor`): 90, or TURBINE_EMU_SM.
int emulated_sm();

/// A registered kernel by exported name, or null.
const Kernel* find_kernel(const std::string& name);

/// Device memory (host memory with a guard page after each allocation).
void* mem_alloc(size_t bytes);
bool mem_free(void* p);
/// Whether `[p, p + bytes)` lies inside one live allocation.
bool mem_valid(uintptr_t p, size_t bytes);
size_t mem_used();

/// Work queued on a stream runs at once, unless this OS thread is recording it (stream capture):
/// then `record` keeps it for the graph and returns true.
bool capturing();
void record(std::function<void()> op);

}  // namespace emu
