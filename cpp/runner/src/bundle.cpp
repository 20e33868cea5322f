// Bundle loading: the same checks, in the same order, as edgeadapt/formats/bundle.py `load_bundle`.
#include <algorithm>
#include <cctype>
#include <map>
#include <set>

#include "detail.hpp"

namespace edgeadapt::runner {

namespace fs = std::filesystem;
using detail::fail;
using detail::Fields;

namespace {

constexpr const char* kManifest = "manifest.json";
const std::set<std::string> kKinds = {"early-exit", "ensemble", "branches"};
const std::set<std::string> kDtypes = {"float32", "float16", "float64", "int64",
                                       "int32",   "int8",    "uint8",   "bool"};

// The most values one input row may hold (bundle.py MAX_ROW_ELEMENTS).
constexpr std::int64_t kMaxRowElements = 2147483647;

// Whether `name` holds a control character (C0, DEL, C1, or U+2028/U+2029): state names
// are printed, so a newline or an ANSI escape in one is refused (bundle.py does too).
bool has_control(const std::string& name) {
    for (std::size_t i = 0; i < name.size(); ++i) {
        const auto c = static_cast<unsigned char>(name[i]);
        if (c < 0x20 || c == 0x7f) return true;
        const auto next = i + 1 < name.size() ? static_cast<unsigned char>(name[i + 1]) : 0;
        if (c == 0xc2 && next >= 0x80 && next <= 0x9f) return true;  // C1 controls
        if (c == 0xe2 && next == 0x80 && i + 2 < name.size()) {
            const auto third = static_cast<unsigned char>(name[i + 2]);
            if (third == 0xa8 || third == 0xa9 || (third >= 0x8b && third <= 0x8f) ||
                (third >= 0xaa && third <= 0xae))
                return true;  // line/paragraph separators, zero-width and bidi controls
        }
    }
    return false;
}

// The absolute path of bundle file `rel`, refusing anything that leaves `root`
// (bundle.py `_safe_path`).
fs::path safe_path(const fs::path& root, const std::string& rel, const std::string& source,
                   const std::string& field) {
    if (rel.empty()) fail(Code::Format, source, field, "expected a non-empty relative path");
    const bool drive = rel.size() >= 2 && std::isalpha(static_cast<unsigned char>(rel[0])) &&
                       rel[1] == ':';
    if (rel.front() == '/' || drive || rel.find('\\') != std::string::npos) {
        fail(Code::UnsafePath, source, field, "absolute path '" + rel + "' is not allowed");
    }
    for (const auto& part : fs::path(rel)) {
        if (part == "..")
            fail(Code::UnsafePath, source, field, "path '" + rel + "' leaves the bundle ('..')");
    }
    const fs::path path = root / rel;
    std::error_code ec;
    for (fs::path probe = path; probe != root && probe.has_relative_path();
         probe = probe.parent_path()) {
        if (fs::is_symlink(fs::symlink_status(probe, ec))) {
            fail(Code::UnsafePath, source, field,
                 "path '" + rel + "' is a symlink; bundle files must be regular files");
        }
    }
    const fs::path real_root = fs::weakly_canonical(root, ec);
    const fs::path real = fs::weakly_canonical(path, ec);
    const auto mismatch = std::mismatch(real_root.begin(), real_root.end(), real.begin(), real.end());
    if (mismatch.first != real_root.end())
        fail(Code::UnsafePath, source, field, "path '" + rel + "' leaves the bundle");
    return path;
}

InputSpec parse_input(const Fields& f) {
    InputSpec spec;
    spec.name = f.str("name");
    const detail::Json& shape = f.list("shape");
    std::int64_t row = 1;
    if (shape.empty() || shape[0] != "batch")
        f.fail("the first axis must be 'batch' (the dynamic batch axis)", "shape");
    for (std::size_t k = 1; k < shape.size(); ++k) {
        const std::string at = f.at("shape", k);
        if (!shape[k].is_number_integer() || detail::json_integer(shape[k], f.source(), at) < 1)
            f.fail_at(at, "must be a positive integer");
        spec.dims.push_back(shape[k].get<std::int64_t>());
        if (spec.dims.back() > kMaxRowElements / row)  // divided: the product could overflow
            f.fail("a row exceeds " + std::to_string(kMaxRowElements) + " values", "shape");
        row *= spec.dims.back();
    }
    spec.dtype = f.str("dtype");
    if (!kDtypes.count(spec.dtype)) f.fail("must be one of the bundle dtypes", "dtype");
    return spec;
}

// ONNX TensorProto.DataType of each bundle dtype.
std::int32_t onnx_type(const std::string& dtype) {
    static const std::map<std::string, std::int32_t> types = {
        {"float32", 1}, {"uint8", 2}, {"int8", 3},     {"int32", 6},
        {"int64", 7},   {"bool", 9},  {"float16", 10}, {"float64", 11}};
    return types.at(dtype);
}

// A Python list's repr of `names` (['a', 'b']), as bundle.py words them.
std::string name_list(const std::vector<std::string>& names) {
    std::string out = "[";
    for (std::size_t k = 0; k < names.size(); ++k) out += (k ? ", '" : "'") + names[k] + "'";
    return out + "]";
}

std::string dims_text(const detail::OnnxValue& v) {
    std::string out = "[";
    for (std::size_t k = 0; k < v.dims.size(); ++k)
        out += (k ? ", " : "") + (v.dims[k] ? std::to_string(*v.dims[k]) : std::string("None"));
    return out + "]";
}

// The manifest's facts hold for the step's ONNX file (bundle.py `_check_facts`, then its
// I/O names): each model input it reads has the manifest's dtype, rank and static
// dimensions; axis 0 of every input and output is dynamic (rows are compacted); logits
// are float32 [batch, num_classes] where the file declares them; the graph's inputs and
// outputs are the ones the manifest names.
void check_step_file(const Bundle& b, const Step& step, const detail::OnnxIo& io,
                     const std::string& source, const std::string& at) {
    const auto refuse = [&](const std::string& message) {
        fail(Code::Format, source, at, "'" + step.file + "' " + message);
    };
    for (const detail::OnnxValue& v : io.inputs) {
        const auto spec = std::find_if(b.inputs.begin(), b.inputs.end(),
                                       [&](const InputSpec& in) { return in.name == v.name; });
        if (spec != b.inputs.end()) {
            if (v.elem_type != onnx_type(spec->dtype))
                refuse("input '" + v.name + "' is not " + spec->dtype + ", the manifest's dtype");
            if (v.has_shape && v.dims.size() != spec->dims.size() + 1)
                refuse("input '" + v.name + "' has rank " + std::to_string(v.dims.size()) +
                       ", the manifest's shape has " + std::to_string(spec->dims.size() + 1) + " axes");
        }
        if (v.has_shape && !v.dims.empty() && v.dims[0])
            refuse("input '" + v.name + "' has a fixed batch axis of " + std::to_string(*v.dims[0]) +
                   "; axis 0 must be dynamic");
        if (spec != b.inputs.end() && v.has_shape) {
            for (std::size_t k = 1; k < v.dims.size(); ++k)
                if (v.dims[k] && *v.dims[k] != spec->dims[k - 1])
                    refuse("input '" + v.name + "' has " + std::to_string(*v.dims[k]) + " on axis " +
                           std::to_string(k) + ", the manifest's shape " +
                           std::to_string(spec->dims[k - 1]));
        }
    }
    for (const detail::OnnxValue& v : io.outputs) {
        if (v.has_shape && !v.dims.empty() && v.dims[0])
            refuse("output '" + v.name + "' has a fixed batch axis of " +
                   std::to_string(*v.dims[0]) + "; axis 0 must be dynamic");
        if (v.name != step.logits) continue;
        if (v.elem_type != 1) refuse("logits '" + v.name + "' are not float32");
        if (v.has_shape && (v.dims.size() != 2 || (v.dims[1] && *v.dims[1] != b.num_classes)))
            refuse("logits '" + v.name + "' have shape " + dims_text(v) +
                   "; the manifest says [batch, " + std::to_string(b.num_classes) + "]");
    }
    std::vector<std::string> inputs, outputs, want_out;
    for (const detail::OnnxValue& v : io.inputs) inputs.push_back(v.name);
    for (const detail::OnnxValue& v : io.outputs) outputs.push_back(v.name);
    if (!step.activation.empty()) want_out.push_back(step.activation);
    want_out.push_back(step.logits);
    std::vector<std::string> got_sorted = outputs, want_sorted = want_out;
    std::sort(got_sorted.begin(), got_sorted.end());
    std::sort(want_sorted.begin(), want_sorted.end());
    if (inputs != step.inputs || got_sorted != want_sorted)
        refuse("has inputs " + name_list(inputs) + " and outputs " + name_list(outputs) +
               "; the manifest says " + name_list(step.inputs) + " and " + name_list(want_out));
}

std::vector<std::string> str_list(const Fields& f, const std::string& key) {
    std::vector<std::string> out;
    const detail::Json& values = f.list(key);
    for (std::size_t k = 0; k < values.size(); ++k) {
        if (!values[k].is_string() || values[k].get<std::string>().empty())
            f.fail_at(f.at(key, k), "expected a non-empty string");
        out.push_back(values[k].get<std::string>());
    }
    return out;
}

// Each state's `chain` (version 3: an early-exit bundle of at least two chains, each a
// contiguous run of states), or none for a bundle of one chain; bundle.py's rules.
std::vector<std::string> parse_chains(const Fields& f, const std::string& kind,
                                      std::int64_t version) {
    const detail::Json& states = f.list("states");
    bool any = false;
    for (std::size_t i = 0; i < states.size(); ++i) {
        const Fields s = f.item("states", i);
        if (s.has("chain") && version < 3) s.fail("chains need manifest version 3", "chain");
        any = any || s.has("chain");
    }
    if (version < 3) return {};
    if (kind != "early-exit") f.fail("version 3 is an early-exit bundle of several chains", "kind");
    if (!any) f.fail("version 3 is a bundle of several chains; no state has a chain", "version");
    std::vector<std::string> chains;
    std::vector<std::string> seen;
    for (std::size_t i = 0; i < states.size(); ++i) {
        const Fields s = f.item("states", i);
        const std::string chain = s.str("chain");
        if (has_control(chain)) s.fail("must not contain control characters", "chain");
        const bool known = std::count(seen.begin(), seen.end(), chain) > 0;
        if (known && chains.back() != chain)
            s.fail("the states of chain '" + chain + "' must be contiguous", "chain");
        if (!known) seen.push_back(chain);
        chains.push_back(chain);
    }
    if (seen.size() < 2)
        f.fail("a version 3 bundle has at least two chains, got " + std::to_string(seen.size()),
               "states");
    return chains;
}

void load(const fs::path& given, Bundle& out, bool verify) {
    fs::path root = given;
    std::error_code ec;
    if (root.filename() == kManifest && fs::is_regular_file(root, ec)) root = root.parent_path();
    root = fs::absolute(root, ec);
    if (!fs::is_directory(root, ec)) fail(Code::Io, root.string(), "", "no such bundle directory");
    const fs::path manifest = root / kManifest;
    const std::string source = manifest.string();
    if (fs::is_symlink(fs::symlink_status(manifest, ec)))
        fail(Code::UnsafePath, source, "",
             "is a symlink; a bundle's manifest must be a regular file inside it");
    const std::string raw = detail::read_bytes(manifest, detail::kMaxTextBytes);
    const detail::Json doc = detail::parse_document(raw, source, "edgeadapt-bundle", {1, 2, 3});
    const Fields f(doc, source);

    Bundle b;
    b.path = root;
    b.kind = f.str("kind");
    if (!kKinds.count(b.kind)) f.fail("must be one of early-exit, ensemble, branches", "kind");
    b.chains = parse_chains(f, b.kind, doc["version"].get<std::int64_t>());
    const bool chained = !b.chains.empty();
    // Version 1 holds one `input` object, version 2 a list `inputs`.
    if (doc["version"].get<std::int64_t>() == 1) {
        b.inputs.push_back(parse_input(f.child("input")));
    } else {
        const detail::Json& inputs = f.list("inputs");
        if (inputs.empty()) f.fail("a bundle needs at least one input", "inputs");
        for (std::size_t k = 0; k < inputs.size(); ++k) {
            const Fields item = f.item("inputs", k);
            InputSpec spec = parse_input(item);
            for (const InputSpec& seen : b.inputs)
                if (seen.name == spec.name)
                    item.fail("duplicate input name '" + spec.name + "'", "name");
            b.inputs.push_back(std::move(spec));
        }
    }
    std::set<std::string> model_inputs;
    for (const InputSpec& spec : b.inputs) model_inputs.insert(spec.name);
    f.object("producer");  // not read here, but of the type bundle.py requires
    f.object("extra");
    b.num_classes = f.integer("num_classes");
    if (b.num_classes < 2) f.fail("must be >= 2", "num_classes");

    std::vector<std::pair<std::string, std::string>> files;  // (relative path, sha256)
    for (const auto& [rel, digest] : f.object("files").items()) {
        const std::string at = "$.files." + rel;
        const fs::path path = safe_path(root, rel, source, at);
        if (!digest.is_string() || !detail::is_sha256_hex(digest.get<std::string>()))
            fail(Code::Format, source, at, "expected a lowercase hex sha256");
        if (!fs::is_regular_file(path, ec))
            fail(Code::Io, source, at, "file '" + rel + "' is missing from the bundle");
        files.emplace_back(rel, digest.get<std::string>());
    }
    const auto listed = [&files](const std::string& rel) -> const std::string* {
        for (const auto& [r, d] : files)
            if (r == rel) return &d;
        return nullptr;
    };

    const detail::Json& states = f.list("states");
    if (states.empty()) f.fail("a bundle needs at least one state", "states");
    for (std::size_t i = 0; i < states.size(); ++i) {
        const Fields s = f.item("states", i);
        const std::string name = s.str("name");
        if (has_control(name)) s.fail("must not contain control characters", "name");
        if (std::count(b.state_names.begin(), b.state_names.end(), name))
            s.fail("duplicate state name '" + name + "'", "name");
        b.state_names.push_back(name);
        Step step;
        step.file = s.str("file", false);
        step.path = safe_path(root, step.file, source, s.at("file"));
        const std::string* digest = listed(step.file);
        if (digest == nullptr) s.fail("'" + step.file + "' is not listed in $.files", "file");
        if (s.str("sha256", false) != *digest) s.fail("does not match $.files", "sha256");
        std::map<std::string, std::int64_t> ints;
        for (const char* key :
             {"flops", "macs", "stage_flops", "stage_macs", "head_flops", "head_macs", "params"}) {
            ints[key] = s.integer(key);
            if (ints[key] < 0) s.fail("must be >= 0", key);
        }
        if (ints["stage_flops"] + ints["head_flops"] != ints["flops"]) s.fail("stage_flops + head_flops must equal flops", "flops");
        step.activation = s.optional_str("activation");
        step.inputs = str_list(s, "inputs");
        // in a bundle of several chains, each chain chains as a bundle of its own
        const bool first = i == 0 || (chained && b.chains[i - 1] != b.chains[i]);
        const bool last = i + 1 == states.size() || (chained && b.chains[i + 1] != b.chains[i]);
        std::set<std::string> allowed = model_inputs;
        if (b.kind == "early-exit" && !first) {
            const Step& prev = b.steps.back();
            if (!prev.activation.empty()) allowed.insert(prev.activation);
            allowed.insert(prev.logits);
        }
        const bool reads =
            !step.inputs.empty() &&
            std::all_of(step.inputs.begin(), step.inputs.end(),
                        [&](const std::string& n) { return allowed.count(n) > 0; });
        if (!reads) {
            std::string names;
            for (const auto& n : allowed) names += (names.empty() ? "'" : ", '") + n + "'";
            s.fail("inputs do not chain: allowed are [" + names + "]", "inputs");
        }
        if (b.kind == "early-exit" && step.activation.empty() != last)
            s.fail("every early-exit step but the last has an activation; the last has none",
                   "activation");
        if (b.kind != "early-exit" && !step.activation.empty())
            s.fail("ensemble members and branches have no activation", "activation");
        step.logits = s.str("logits");
        str_list(s, "unknown_ops");  // not read here, but of the type bundle.py requires
        b.steps.push_back(std::move(step));
    }
    if (verify) {
        for (const auto& [rel, digest] : files) {
            if (detail::sha256_file(root / rel) != digest)
                fail(Code::Integrity, source, "$.files." + rel,
                     "sha256 mismatch for '" + rel + "': the file was altered");
        }
        for (std::size_t i = 0; i < b.steps.size(); ++i) {
            const Step& step = b.steps[i];
            const std::string at = "$.states[" + std::to_string(i) + "]";
            const std::string bytes = detail::read_bytes(step.path);
            // a backend reads external data beside the ONNX file: it must be listed (hashed)
            for (const std::string& loc : detail::onnx_external_locations(bytes, step.path.string())) {
                const std::string joined = (fs::path(step.file).parent_path() / loc).generic_string();
                const std::string field = at + ".file (" + step.file + " external data)";
                safe_path(root, loc.empty() ? std::string() : joined, source, field);
                const std::string rel = fs::path(joined).lexically_normal().generic_string();
                if (!listed(rel))
                    fail(Code::Integrity, source, at,
                         "'" + step.file + "' references external data '" + loc +
                             "' that the manifest does not list");
            }
            check_step_file(b, step, detail::onnx_graph_io(bytes, step.path.string()), source, at);
        }
    }
    b.manifest_sha256 = detail::sha256_hex(raw);
    out = std::move(b);
}

}  // namespace

std::size_t Bundle::chain_start(std::size_t i) const noexcept {
    if (kind != "early-exit") return i;
    if (chains.empty()) return 0;
    while (i > 0 && chains[i - 1] == chains[i]) --i;
    return i;
}

std::int64_t InputSpec::row_elements() const noexcept {
    std::int64_t n = 1;
    for (std::int64_t d : dims) n *= d;
    return n;
}

Error load_bundle(const fs::path& path, Bundle& out, bool verify) noexcept {
    return detail::guard(Code::Io, path.string(), [&] { load(path, out, verify); });
}

}  // namespace edgeadapt::runner
