// `memlayers info [--json]`: what this build can run on this machine — version, backends and why a
// backend cannot run, every registered variant per op, the CPU and its SIMD targets, the GPU.
// Reports record the JSON form beside their measurements.
#include <sched.h>

#include <fstream>
#include <iostream>
#include <memory>
#include <thread>

#include <fmt/format.h>
#include <hwy/targets.h>
#include <nlohmann/json.hpp>

#include "common/backend.h"
#include "common/blas_core.h"
#include "common/registry.h"
#include "subcommand.h"

namespace memlayers::cli::info_command {
namespace {

using nlohmann::json;

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const auto start = line.find_first_not_of(" \t", colon + 1);
    return start == std::string::npos ? "" : line.substr(start);
  }
  return "unknown (no 'model name' in /proc/cpuinfo)";
}

// Cores this process may run on: fewer than the machine's under a container's CPU set.
int cores_available() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 0;
  return CPU_COUNT(&set);
}

// Highway's targets this CPU supports at run time, best first (a lower bit is a better target).
std::vector<std::string> simd_targets() {
  std::vector<std::string> out;
  for (std::int64_t bits = hwy::SupportedTargets(); bits != 0; bits &= bits - 1)
    out.emplace_back(hwy::TargetName(bits & -bits));
  return out;
}

json collect() {
  json j;
  j["version"] = MEMLAYERS_VERSION;
  // The commit the build was configured at; null when the source was not a git checkout.
  j["git_commit"] = std::string(MEMLAYERS_GIT_COMMIT).empty() ? json() : json(MEMLAYERS_GIT_COMMIT);
  j["build"] = {{"type", MEMLAYERS_BUILD_TYPE},
                {"sanitizer", MEMLAYERS_SANITIZER},
                {"compiler", MEMLAYERS_COMPILER}};

  j["backends"] = json::array();
  for (Backend b : kAllBackends) {
    const std::string why = usable(b);
    j["backends"].push_back({{"name", std::string(to_string(b))},
                             {"compiled", backend_info(b).compiled},
                             {"usable", why.empty()},
                             {"why_not", why}});
  }

  j["ops"] = json::array();
  for (const std::string& op : all_ops()) {
    std::size_t n = 0;
    for (const auto& v : all_variants()) n += v.op == op;
    j["ops"].push_back({{"name", op}, {"variant_count", n}});
  }
  j["variants"] = json::array();
  for (const auto& v : all_variants())
    j["variants"].push_back({{"op", v.op},
                             {"name", v.name},
                             {"backend", std::string(to_string(v.backend))},
                             {"summary", v.summary},
                             {"deterministic", v.deterministic}});

  j["cpu"] = {{"model", cpu_model()},
              {"cores", std::thread::hardware_concurrency()},
              {"cores_available", cores_available()},
              {"simd_targets", simd_targets()},
              {"blas", host_blas::describe()}};
  const std::string gpu_why = usable(Backend::cuda);
  j["gpu"] = {{"present", gpu_why.empty()}, {"why_not", gpu_why}};
  return j;
}

std::string out;  // the text report, printed at once
template <class... Args>
void line(fmt::format_string<Args...> f, Args&&... args) {
  out += fmt::format(f, std::forward<Args>(args)...);
  out += '\n';
}

void print_text(const json& j) {
  line("memlayers {}{}", j["version"].get<std::string>(),
       j["git_commit"].is_null() ? "" : " (git " + j["git_commit"].get<std::string>() + ")");
  const auto& build = j["build"];
  line("build:    {}{}", build["type"].get<std::string>(),
       build["sanitizer"].get<std::string>().empty()
           ? ""
           : ", sanitizer " + build["sanitizer"].get<std::string>());
  const auto& cpu = j["cpu"];
  line("cpu:      {} ({} cores, {} available to this process)", cpu["model"].get<std::string>(),
       cpu["cores"].get<unsigned>(), cpu["cores_available"].get<int>());
  line("simd:     {}", fmt::join(cpu["simd_targets"].get<std::vector<std::string>>(), " "));
  line("blas:     {}", cpu["blas"].get<std::string>());
  line("gpu:      {}", j["gpu"]["present"].get<bool>()
                           ? std::string("present")
                           : "none usable (" + j["gpu"]["why_not"].get<std::string>() + ")");
  line("");
  line("backends:");
  for (const auto& b : j["backends"])
    line("  {:<10} {}", b["name"].get<std::string>(),
         b["usable"].get<bool>() ? std::string("usable")
                                 : "not usable: " + b["why_not"].get<std::string>());
  line("");
  if (j["ops"].empty()) line("ops: none registered in this build");
  for (const auto& op : j["ops"]) {
    const std::string name = op["name"].get<std::string>();
    const std::size_t n = op["variant_count"].get<std::size_t>();
    line("{} ({} variant{})", name, n, n == 1 ? "" : "s");
    for (const auto& v : j["variants"]) {
      if (v["op"] != name) continue;
      line("  {:<10} {:<28} {:<17} {}", v["backend"].get<std::string>(),
           v["name"].get<std::string>(),
           v["deterministic"].get<bool>() ? "deterministic" : "nondeterministic",
           v["summary"].get<std::string>());
    }
  }
  std::cout << out << std::flush;
}

struct Options {
  bool json = false;
};

Action setup(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "info", "What this build can run here: version, backends, registered variants, CPU, GPU");
  auto opt = std::make_shared<Options>();
  sub->add_flag("--json", opt->json, "Print one JSON object instead of text");
  return [opt] {
    const json j = collect();
    if (opt->json)
      std::cout << j.dump(2) << std::endl;
    else
      print_text(j);
  };
}

MEMLAYERS_SUBCOMMAND("info", setup);

}  // namespace
}  // namespace memlayers::cli::info_command
