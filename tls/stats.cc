#include "tls/stats.h"

namespace ferry::tls {
namespace {

StatsValue Session(const TlsSessionStats& t) {
  StatsValue o = StatsValue::Object({{"version", t.version}, {"cipher", t.cipher}});
  if (!t.peer.empty()) o.Set("peer", t.peer);
  return o;
}

// "  tls: TLSv1.3 TLS_AES_128_GCM_SHA256 on the main stream and 4 multifd channels (x509; kTLS not available ...)"
std::string Line(const TlsStats& t) {
  const std::string ktls = std::string("kTLS ") +
                           (t.ktls_available ? "offered by the kernel but not used" : "not available in this kernel");
  if (t.sessions.empty()) return "  tls: " + t.creds + ", no session established (" + ktls + ")\n";
  const TlsSessionStats& m = t.sessions.front();
  std::string line = "  tls: " + m.version + " " + m.cipher + " on the " +
                     (m.channel == "main" ? std::string("main stream") : m.channel);
  const size_t more = t.sessions.size() - 1;
  if (more > 0) {
    bool same = true;
    for (const TlsSessionStats& o : t.sessions) same = same && o.version == m.version && o.cipher == m.cipher;
    line += " and " + std::to_string(more) + " multifd channel" + (more > 1 ? "s" : "");
    if (!same) line += " (not all with the same protocol: see --json)";
  }
  return line + " (" + t.creds + "; " + ktls + ")\n";
}

}  // namespace

void TlsStats::Report(StatsReport& out) const {
  if (creds.empty()) return;
  StatsValue tls;
  tls.Set("creds", creds);
  tls.Set("ktls", false);
  StatsValue multifd = StatsValue::Array();
  for (const TlsSessionStats& t : sessions) {
    if (t.channel == "main") {
      tls.Set("main", Session(t));
    } else {
      multifd.Push(Session(t));
    }
  }
  tls.Set("multifd", std::move(multifd));
  out.json.Set("tls", std::move(tls));
  out.lines += Line(*this);
}

}  // namespace ferry::tls
