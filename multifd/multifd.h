// multifd: pages in parallel over N extra connections.
//
// Source: MultifdSinkFactory builds a MultifdSink (a PageSink). The
// migration thread batches pages into packets of up to 128 pages and hands
// them through bounded queues to N named sender threads, each owning one
// channel. With zero-page-detection=multifd the senders test pages and list
// zero pages in the packet; with compression each sender keeps its zstd
// stream. The barrier (QEMU >= 8): at every round end a SYNC packet on
// every channel, then MULTIFD_FLUSH in the main stream; with
// multifd-flush-after-each-section=on (QEMU <= 7.2) a SYNC at every RAM
// section end instead, and the destination syncs on every EOS.
//
// Destination: MultifdReceiver (a PageReceiver) runs N receiver threads that
// validate every packet and place pages straight into guest memory. On
// Sync() the main thread waits until every receiver has read its SYNC
// packet, then releases them — so a page of round N+1 arriving on one
// channel can never be overwritten by a stale copy of round N from another.
//
// Connection set-up:
//   (multifd/transport.cc does this for a plan, core/setup.h)
//   source:       main = Connect(uri); chans = ConnectMultifd(connect, n, uuid, ...)
//   destination:  AcceptMigrationChannels(acceptor, n, uuid, ...) accepts n+1
//                 connections in any order and tells them apart by their
//                 first 4 bytes (QEVM magic = main stream, 0x11223344 =
//                 multifd init packet, then validated: version, uuid, id < n,
//                 no duplicates).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <stop_token>
#include <vector>

#include "../core/channel.h"
#include "../core/page_sink.h"
#include "../core/params.h"
#include "../core/ram_loader.h"
#include "../core/setup.h"
#include "../core/uri.h"
#include "../socket/socket.h"
#include "packet.h"
#include "settings.h"
#include "stats.h"

namespace ferry::multifd {

// Makes one more connection to the migration's endpoint (the plan's
// OpenContext::connect_more: socket/ connects, channel layers applied).
using ConnectFn = std::function<Result<std::unique_ptr<Channel>>(std::chrono::milliseconds, std::stop_token)>;

// Opens n connections with `connect` and sends each its init packet (ids 0..n-1).
Result<std::vector<std::unique_ptr<Channel>>> ConnectMultifd(const ConnectFn& connect, uint32_t n, const Uuid& uuid,
                                                             std::chrono::milliseconds timeout,
                                                             std::stop_token stop = {});

struct IncomingChannels {
  std::unique_ptr<Channel> main;                   // the QEMU stream (magic already replayed)
  std::vector<std::unique_ptr<Channel>> multifd;   // index = channel id
  // The accepted connection `main` replays its first bytes from (what the
  // acceptor's channel layers made of it, tls/); owned by `main`.
  Channel* main_connection = nullptr;
};

// Accepts the main connection and `n` multifd connections (n = 0: just the
// main one), validating each init packet against `uuid`. `handshakes`: each
// accepted connection runs a handshake first (the acceptor's channel layers,
// tls/) and a ferry source shakes hands on every connection before it writes
// the main stream's first bytes, so all n+1 are accepted before any is read.
Result<IncomingChannels> AcceptMigrationChannels(Acceptor& listener, uint32_t n, const Uuid& uuid,
                                                 std::chrono::milliseconds timeout, std::stop_token stop = {},
                                                 bool handshakes = false);

class MultifdSinkFactory final : public PageSinkFactory {
 public:
  // `channels`: connected, init packets sent (ConnectMultifd). multifd's
  // settings (multifd/settings.h; Plan's multifd transport passes its own).
  MultifdSinkFactory(const Settings& settings, std::vector<std::unique_ptr<Channel>> channels);
  ~MultifdSinkFactory() override;
  Result<std::unique_ptr<PageSink>> Make(StreamWriter& main) override;
  bool saver_detects_zero() const override;

 private:
  Settings settings_;
  std::vector<std::unique_ptr<Channel>> channels_;
};

// Destination side. Owns the multifd channels.
std::unique_ptr<PageReceiver> MakeMultifdReceiver(const Settings& settings,
                                                  std::vector<std::unique_ptr<Channel>> channels);

}  // namespace ferry::multifd
