// ctest: a bounded random-mutation run over the runner's readers. Each case mutates a
// valid seed (the shipped bundle's manifest.json, a gate plan with a runtime block made
// for it, a float32 .npy, a two-input .npz of int64 arrays) with byte flips,
// insertions, deletions, duplicated spans and JSON-hostile tokens, and hands it to
// load_bundle / load_plan (+ apply_runtime) / read_npy / read_inputs. A case passes when the reader returns
// (Ok, or an Error with a known code and a message); a crash, a hang or a sanitizer
// report fails the test. Prints the number of cases tried per reader.
//
//   fuzz_readers BUNDLE SCRATCH_DIR [CASES_PER_READER] [SEED]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "edgeadapt/runner.hpp"
#include "npy.hpp"
#include "zip_writer.hpp"

namespace fs = std::filesystem;
namespace ea = edgeadapt::runner;

namespace {

std::string read(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write(const fs::path& p, const std::string& bytes) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f << bytes;
}

const char* const kTokens[] = {
    "[", "]", "{", "}", "\"", ",", ":", "null", "true", "-1", "0", "1e400", "-0",
    "99999999999999999999999", "9223372036854775808", "1e308", "\"batch\"", "\\u0000",
    "\xef\xbb\xbf", "\"version\": 2", "\"kind\": \"ensemble\"", "NaN", "\"../x\"", "\"/etc\"",
    "[[[[[[[[[[[[[[[[", "\xff\xfe", "\"a\": 1, \"a\": 2",
};

std::string mutate(std::string s, std::mt19937_64& rng) {
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
        const std::size_t n = s.size();
        const std::size_t at = n ? rng() % n : 0;
        switch (rng() % 6) {
            case 0:
                if (n) s[at] = static_cast<char>(s[at] ^ (1 << (rng() % 8)));
                break;
            case 1: s.insert(at, 1, static_cast<char>(rng() % 256)); break;
            case 2:
                if (n) s.erase(at, 1 + rng() % std::min<std::size_t>(n - at, 64));
                break;
            case 3:
                if (n) {
                    const std::size_t len = 1 + rng() % std::min<std::size_t>(n - at, 256);
                    s.insert(rng() % n, s.substr(at, len));
                }
                break;
            case 4: s.insert(at, kTokens[rng() % (sizeof(kTokens) / sizeof(kTokens[0]))]); break;
            case 5:
                if (n) s.resize(at);  // truncated
                break;
        }
    }
    return s;
}

bool sane(const ea::Error& e) {
    const int code = static_cast<int>(e.code);
    return e.code == ea::Code::Ok || (code >= 1 && code <= 8 && !e.message.empty());
}

std::string npy_seed() {
    return edgeadapt::examples::testing::npy_bytes(
        "<f4", "(4, 1, 40)", std::string(4 * 40 * sizeof(float), '\0'));
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: fuzz_readers BUNDLE SCRATCH_DIR [CASES] [SEED]\n");
        return 64;
    }
    const fs::path src = argv[1], scratch = fs::path(argv[2]) / "fuzz";
    const long cases = argc > 3 ? std::strtol(argv[3], nullptr, 10) : 2000;
    std::mt19937_64 rng(argc > 4 ? std::strtoull(argv[4], nullptr, 10) : 20261202);
    fs::remove_all(scratch);
    fs::create_directories(scratch);
    const fs::path bundle = scratch / "bundle";
    fs::copy(src, bundle, fs::copy_options::recursive);
    const std::string manifest = read(bundle / "manifest.json");

    ea::Bundle b;
    if (ea::load_bundle(bundle, b)) {
        std::fprintf(stderr, "fuzz_readers: the seed bundle does not load\n");
        return 1;
    }
    std::string names;
    for (const auto& n : b.state_names) names += (names.empty() ? "\"" : ", \"") + n + "\"";
    const std::string plan_seed =
        "{\"format\": \"edgeadapt-plan\", \"version\": 1, \"bundle\": {\"manifest_sha256\": \"" +
        b.manifest_sha256 + "\", \"kind\": \"" + b.kind + "\", \"states\": [" + names +
        "]}, \"measure\": \"maxprob\", \"states\": [0, 2, 3], \"state_names\": [\"" +
        b.state_names[0] + "\", \"" + b.state_names[2] + "\", \"" + b.state_names[3] +
        "\"], \"thresholds\": [0.9, 0.8], \"cost_ms\": [0.1, 0.2, 0.3], \"budget\": "
        "[{\"budget_ms\": 0.1, \"state\": 0, \"accuracy\": 0.5}], \"policy\": {\"kind\": \"gate\", "
        "\"gates\": [{\"weights\": [1, 2, 3, 4, 5], \"bias\": 0}, {\"weights\": [1, 2, 3, 4, 5], "
        "\"bias\": -1}]}, \"runtime\": {\"runtime\": \"onnxruntime\", \"preset\": null, "
        "\"precision\": \"as-exported\", \"threads\": 2, \"options\": {\"spin\": false, "
        "\"device\": \"cpu\"}}}";
    const std::string npy = npy_seed();
    namespace ex = edgeadapt::examples;
    const std::string ints(2 * 6 * 8, '\1');
    const std::string npz = ex::testing::zip_bytes(
        {{"input_ids.npy", ex::testing::npy_bytes("<i8", "(2, 6)", ints)},
         {"attention_mask.npy", ex::testing::npy_bytes("<i8", "(2, 6)", ints)}});
    const std::vector<ea::InputSpec> specs = {{"input_ids", {6}, "int64"},
                                              {"attention_mask", {6}, "int64"}};
    {
        ex::InputArrays seed;
        write(scratch / "x.npz", npz);
        if (ex::read_inputs(scratch / "x.npz", specs, seed)) {
            std::fprintf(stderr, "fuzz_readers: the seed npz does not read\n");
            return 1;
        }
    }

    long tried[4] = {0, 0, 0, 0}, accepted[4] = {0, 0, 0, 0}, insane = 0;
    const auto start = std::chrono::steady_clock::now();
    for (long i = 0; i < cases; ++i) {
        write(bundle / "manifest.json", mutate(manifest, rng));
        const ea::Error e = ea::load_bundle(bundle, b, /*verify=*/i % 64 == 0);
        ++tried[0];
        accepted[0] += !e;
        insane += !sane(e);

        const fs::path plan = scratch / "plan.json";
        write(plan, mutate(plan_seed, rng));
        ea::Plan p;
        const ea::Error pe = ea::load_plan(plan, p);
        ++tried[1];
        accepted[1] += !pe;
        insane += !sane(pe);
        if (!pe) {
            ea::BackendOptions bo;
            std::vector<std::string> notes;
            insane += !sane(ea::apply_runtime(p, "openvino", {}, bo, notes));
        }

        const fs::path x = scratch / "x.npy";
        write(x, mutate(npy, rng));
        edgeadapt::examples::NpyArray a;
        const ea::Error ne = edgeadapt::examples::read_npy(x, a);
        ++tried[2];
        accepted[2] += !ne;
        insane += !sane(ne);

        const fs::path z = scratch / "x.npz";
        write(z, mutate(npz, rng));
        ex::InputArrays in;
        const ea::Error ze = ex::read_inputs(z, specs, in);
        ++tried[3];
        accepted[3] += !ze;
        insane += !sane(ze);
        std::vector<ex::NpzMember> members;
        insane += !sane(ex::read_npz(z, {}, members));
    }
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("fuzz_readers: %ld cases in %.1f s: bundle %ld (%ld accepted), plan %ld (%ld "
                "accepted), npy %ld (%ld accepted), npz %ld (%ld accepted); %ld without a code "
                "and message\n",
                tried[0] + tried[1] + tried[2] + tried[3], s, tried[0], accepted[0], tried[1],
                accepted[1], tried[2], accepted[2], tried[3], accepted[3], insane);
    fs::remove_all(scratch);
    return insane == 0 ? 0 : 1;
}
