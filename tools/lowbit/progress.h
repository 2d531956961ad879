// Progress lines on stderr: rewritten in place on a terminal, every 10% otherwise.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <unistd.h>

namespace lowbit::cli {

inline std::string format_duration(double s) {
  if (s < 60) return fmt::format("{:.0f}s", s);
  if (s < 3600) return fmt::format("{}m{:02d}s", int(s) / 60, int(s) % 60);
  return fmt::format("{}h{:02d}m", int(s) / 3600, (int(s) % 3600) / 60);
}

class Progress {
 public:
  explicit Progress(std::string what) : what_(std::move(what)), tty_(::isatty(2)) {}
  // done of total items after `elapsed` seconds; `extra` is appended (e.g. the running metric).
  void update(int64_t done, int64_t total, double elapsed, const std::string& extra = "") {
    const double eta = done > 0 ? elapsed / double(done) * double(total - done) : 0;
    const std::string line = fmt::format("{} [{}/{}] {}, {:.2f} s/item, ETA {}", what_, done, total, extra,
                                         done ? elapsed / double(done) : 0.0, format_duration(eta));
    if (tty_) {
      fmt::print(stderr, "\r{:<100}", line);
      if (done == total) fmt::print(stderr, "\n");
    } else if (done == total || done * 10 / total != last_decile_ || done == 1) {
      last_decile_ = done * 10 / total;
      fmt::print(stderr, "{}\n", line);
    }
    std::fflush(stderr);
  }

 private:
  std::string what_;
  bool tty_;
  int64_t last_decile_ = 0;
};

}  // namespace lowbit::cli
