// Memory registration for RDMA: the destination's RAM blocks are registered
// either whole at setup (pin-all) or in 1 MiB chunks on the first REGISTER
// REQUEST that touches them (dynamic), cached, and released at the end.
//
// The cache talks to the verbs layer through Registrar so that unit tests can
// count registrations with a fake:
//
//   PdRegistrar verbs(pd);                       // ibv_reg_mr on pd
//   RegistrationCache cache(verbs, {{host, len}}, /*pin_all=*/false);
//   FERRY_ASSIGN_OR_RETURN(Keys k, cache.Register(0, offset, 1));  // chunk of offset
//   ... WRITEs with k.rkey ...
//   cache.ReleaseAll();                          // or let the cache go
//
// Not thread-safe: one control loop owns it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/status.h"
#include "rdma/protocol.h"

struct ibv_pd;

namespace ferry::rdma {

// One registered range; releasing it (destroying it) deregisters.
class Registration {
 public:
  virtual ~Registration() = default;
  virtual uint32_t lkey() const = 0;
  virtual uint32_t rkey() const = 0;
};

// Registers memory for local and remote write.
class Registrar {
 public:
  virtual ~Registrar() = default;
  virtual Result<std::unique_ptr<Registration>> Register(uint8_t* addr, size_t len) = 0;
};

// The real one: ibv_reg_mr on a protection domain (not owned).
class PdRegistrar : public Registrar {
 public:
  explicit PdRegistrar(ibv_pd* pd) : pd_(pd) {}
  Result<std::unique_ptr<Registration>> Register(uint8_t* addr, size_t len) override;

 private:
  ibv_pd* pd_;
};

struct LocalBlock {
  uint8_t* host = nullptr;
  uint64_t length = 0;
};

struct Keys {
  uint32_t lkey = 0;
  uint32_t rkey = 0;
};

class RegistrationCache {
 public:
  // `registrar` must outlive the cache.
  RegistrationCache(Registrar& registrar, std::vector<LocalBlock> blocks, bool pin_all);
  ~RegistrationCache() { ReleaseAll(); }
  RegistrationCache(const RegistrationCache&) = delete;
  RegistrationCache& operator=(const RegistrationCache&) = delete;

  bool pin_all() const { return pin_all_; }
  size_t block_count() const { return blocks_.size(); }
  // Chunks of block `b`: ceil(length / 1 MiB).
  uint64_t chunk_count(uint32_t b) const;

  // pin-all: registers every block whole (once). Dynamic: nothing to do.
  Status RegisterAll();
  // The keys of block `b` registered whole (pin-all; after RegisterAll).
  Result<Keys> BlockKeys(uint32_t b) const;

  // Keys covering [offset, ...) of block `b` for `chunks` chunks starting at
  // the chunk holding `offset`. pin-all: the block's keys. Dynamic: the
  // chunk's registration, made on first use (all `chunks` chunks as one
  // registration, cached under the first chunk) and reused afterwards.
  // Refuses a block index, offset or chunk range outside the blocks.
  Result<Keys> Register(uint32_t b, uint64_t offset, uint64_t chunks);

  // Drops the cached registration of chunk `chunk` of block `b` (UNREGISTER
  // REQUEST); nothing when it is not registered or in pin-all mode.
  Status Unregister(uint32_t b, uint64_t chunk);

  // Deregisters everything.
  void ReleaseAll();

  // Registrations alive now (chunk ranges, or whole blocks).
  size_t live() const { return live_; }
  // Registrations made since construction.
  uint64_t total_registered() const { return total_; }

 private:
  struct Block {
    LocalBlock local;
    std::unique_ptr<Registration> whole;               // pin-all
    std::vector<std::unique_ptr<Registration>> chunk;  // dynamic, by first chunk
  };
  Status CheckBlock(uint32_t b) const;

  Registrar& registrar_;
  std::vector<Block> blocks_;
  bool pin_all_;
  size_t live_ = 0;
  uint64_t total_ = 0;
};

}  // namespace ferry::rdma
