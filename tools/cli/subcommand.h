// How a subcommand joins `memlayers`: its file (compiled into the memlayers executable, see
// tools/cli/CMakeLists.txt) registers a setup function once,
//
//   namespace memlayers::cli::embbag_command {
//   namespace {
//   memlayers::cli::Action setup(CLI::App& app) {
//     auto* sub = app.add_subcommand("embbag", "Weighted EmbeddingBag forward on .npy inputs");
//     auto opt = std::make_shared<Options>();
//     sub->add_option("--values", opt->values, "...")->required();
//     return [opt] { run(*opt); };
//   }
//   MEMLAYERS_SUBCOMMAND("embbag", setup);
//   }  // namespace
//   }  // namespace memlayers::cli::embbag_command
//
// Each file keeps its internals in a namespace of its own (<name>_command): the executable is a
// unity build, which compiles several of these files as one translation unit.
// main() adds every registered subcommand, parses, and runs the action of the one given. Options
// live in state the action shares, so parsing never does work: usage errors (exit 2) are all found
// before anything runs, and an action's memlayers::Error becomes "memlayers: error: ..." (exit 1).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace memlayers::cli {

// Runs a parsed subcommand; throws (memlayers::Error) on failure.
using Action = std::function<void()>;
// Adds one subcommand (with its options) to `app` and returns what it does once parsed.
using Setup = Action (*)(CLI::App& app);

struct Registered {
  std::string name;  // the subcommand's name, which --help sorts by
  Setup setup;
};
std::vector<Registered>& registered_subcommands();
inline bool register_subcommand(std::string name, Setup setup) {
  registered_subcommands().push_back({std::move(name), setup});
  return true;
}

// The project's version line: "memlayers 0.1.0 (git 1a2b3c4d5e6f)".
std::string version_line();

}  // namespace memlayers::cli

#define MEMLAYERS_SUBCOMMAND_CONCAT_(a, b) a##b
#define MEMLAYERS_SUBCOMMAND_CONCAT(a, b) MEMLAYERS_SUBCOMMAND_CONCAT_(a, b)
// MEMLAYERS_SUBCOMMAND("name", setup_function); at namespace scope in the subcommand's file.
#define MEMLAYERS_SUBCOMMAND(name, setup)                         \
  [[maybe_unused]] static const bool MEMLAYERS_SUBCOMMAND_CONCAT( \
      memlayers_subcommand_, __LINE__) = ::memlayers::cli::register_subcommand(name, setup)
