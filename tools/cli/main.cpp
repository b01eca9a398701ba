// memlayers: the command-line face of the suite. `memlayers info` says what this build and machine
// can run; op subcommands (one file each, see subcommand.h) run registered variants on .npy files.
// Build and run:
//   cmake -S . -B build -G Ninja && cmake --build build --target memlayers
//   build/tools/cli/memlayers --help && build/tools/cli/memlayers info
// Exit codes: 0 ok, 1 runtime error ("memlayers: error: ..." on stderr), 2 usage error.
#include <algorithm>
#include <exception>
#include <iostream>
#include <utility>

#include "common/blas_core.h"
#include "subcommand.h"

namespace memlayers::cli {

std::vector<Registered>& registered_subcommands() {
  static std::vector<Registered> v;
  return v;
}

std::string version_line() {
  std::string s = "memlayers " MEMLAYERS_VERSION;
  if (std::string commit = MEMLAYERS_GIT_COMMIT; !commit.empty()) s += " (git " + commit + ")";
  return s;
}

namespace {

// CLI11's own wording, with the program name in front and a pointer to the list that is accepted.
std::string usage_error(const CLI::App* app, const CLI::Error& e) {
  std::string msg = e.what();
  // CLI11 calls a misspelt subcommand a missing one plus an extra argument; say what happened.
  const auto rest = app->remaining();
  if (app->get_subcommands().empty() && !rest.empty() && rest.front().rfind("-", 0) != 0) {
    std::string known;
    for (const CLI::App* sub : app->get_subcommands([](const CLI::App*) { return true; }))
      known += (known.empty() ? "" : ", ") + sub->get_name();
    msg = "unknown subcommand '" + rest.front() + "'; available: " + known;
  }
  return "memlayers: usage error: " + msg +
         "\nRun 'memlayers --help' (or 'memlayers <subcommand> --help') for what is accepted.\n";
}

int run(int argc, char** argv) {
  CLI::App app{
      "memlayers: kernels for LLM memory layers (product-key top-k search, weighted "
      "EmbeddingBag), their CPU references, and tools to run them on .npy files."};
  app.name("memlayers");
  app.set_version_flag("--version", version_line());
  app.require_subcommand(1);
  app.failure_message(usage_error);

  // Registration order across files is unspecified; sorting keeps --help stable.
  auto registered = registered_subcommands();
  std::sort(registered.begin(), registered.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  auto all = [](CLI::App*) { return true; };
  std::vector<std::pair<CLI::App*, Action>> actions;
  for (const auto& [name, setup] : registered) {
    const std::size_t before = app.get_subcommands(all).size();
    Action action = setup(app);
    const auto subs = app.get_subcommands(all);
    if (subs.size() != before + 1 || subs.back()->get_name() != name || !action) {
      std::cerr << "memlayers: error: the setup registered as '" << name
                << "' must add exactly that one subcommand and return its action\n";
      return 1;
    }
    actions.emplace_back(subs.back(), std::move(action));
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help and --version arrive here too, with code 0
  }
  try {
    for (auto& [sub, action] : actions)
      if (sub->parsed()) action();
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "memlayers: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace memlayers::cli

int main(int argc, char** argv) {
  memlayers::host_blas::use_native_core(argc, argv);  // OpenBLAS's AVX kernels, not its fallback
  return memlayers::cli::run(argc, argv);
}
