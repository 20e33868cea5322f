// Internal to the runner library: the exception that carries an Error inside the
// library (converted at the noexcept boundary), strict JSON reading with errors that
// name the file and JSON path (as edgeadapt/formats/jsonio.py does), and sha256 via OpenSSL.
#pragma once

#include <cstdint>
#include <exception>
#include <filesystem>
#include <functional>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "edgeadapt/runner.hpp"

namespace edgeadapt::runner::detail {

using Json = nlohmann::ordered_json;

class Failure : public std::exception {
  public:
    Failure(Code code, std::string message) : error_{code, std::move(message)} {}
    const char* what() const noexcept override { return error_.message.c_str(); }
    const Error& error() const noexcept { return error_; }

  private:
    Error error_;
};

// "<source>: <path>: <message>", leaving out empty parts.
std::string where(const std::string& source, const std::string& path, const std::string& message);

[[noreturn]] void fail(Code code, const std::string& source, const std::string& path,
                       const std::string& message);

// Run `body`, turning a Failure into its Error and any other exception into `fallback`.
Error guard(Code fallback, const std::string& context, const std::function<void()>& body) noexcept;

// The largest JSON document read (edgeadapt/formats/jsonio.py MAX_TEXT_BYTES).
constexpr std::uintmax_t kMaxTextBytes = std::uintmax_t{64} << 20;

// The whole file; Code::Io naming it when missing or unreadable, Code::Format when it
// holds more than `max_bytes`.
std::string read_bytes(const std::filesystem::path& path,
                       std::uintmax_t max_bytes = static_cast<std::uintmax_t>(-1));

// Lowercase hex sha256 of bytes / of a file (read in chunks).
std::string sha256_hex(const std::string& bytes);
std::string sha256_file(const std::filesystem::path& path);

bool is_sha256_hex(const std::string& s) noexcept;

// The longest time (ms) a plan may record (edgeadapt/formats/jsonio.py MAX_MS).
constexpr double kMaxMs = 1e12;

// The deepest nesting of objects and lists a format document may have.
constexpr std::size_t kMaxJsonDepth = 256;

// Parse a format document: JSON (no NaN/Infinity: they are not JSON), an object, the
// expected "format" and a "version" in `versions`.
Json parse_document(const std::string& bytes, const std::string& source, const std::string& format,
                    std::initializer_list<std::int64_t> versions);

// The "location" of every tensor in an ONNX file (`bytes`) that points at external
// data, subgraphs, functions and sparse tensors included ("" when it names none);
// Code::Format naming `source` for bytes that are not a readable protobuf.
std::vector<std::string> onnx_external_locations(const std::string& bytes, const std::string& source);

// One graph input or output as the ONNX file declares it: its element type
// (TensorProto.DataType; 0 when not a tensor) and, when it has a shape, each dimension's
// fixed size (nullopt for a symbolic or unknown one).
struct OnnxValue {
    std::string name;
    std::int32_t elem_type = 0;
    bool has_shape = false;
    std::vector<std::optional<std::int64_t>> dims;
};

// The main graph's inputs (initializers left out) and outputs, in order.
struct OnnxIo {
    std::vector<OnnxValue> inputs;
    std::vector<OnnxValue> outputs;
};

OnnxIo onnx_graph_io(const std::string& bytes, const std::string& source);

// Typed accessors over a JSON object that report the file and JSON path (as
// edgeadapt.formats.jsonio.Fields): a bool is never a number here.
class Fields {
  public:
    Fields(const Json& obj, std::string source, std::string path = "$");

    const Json& get(const std::string& key) const;  // missing -> Format error
    bool has(const std::string& key) const { return obj_.contains(key); }
    std::string str(const std::string& key, bool non_empty = true) const;
    // A string or null ("" for null).
    std::string optional_str(const std::string& key) const;
    std::int64_t integer(const std::string& key) const;
    double number(const std::string& key) const;  // finite
    const Json& list(const std::string& key) const;
    const Json& object(const std::string& key) const;
    Fields child(const std::string& key) const;
    Fields item(const std::string& key, std::size_t index) const;  // an object in a list

    std::string at(const std::string& key) const { return path_ + "." + key; }
    std::string at(const std::string& key, std::size_t index) const {
        return at(key) + "[" + std::to_string(index) + "]";
    }
    [[noreturn]] void fail(const std::string& message, const std::string& key = "") const;
    [[noreturn]] void fail_at(const std::string& path, const std::string& message) const;
    const std::string& source() const { return source_; }
    const std::string& path() const { return path_; }

  private:
    const Json& obj_;
    std::string source_;
    std::string path_;
};

// A JSON number (not a bool) as a double, finite; Format error at `path` otherwise.
double finite_number(const Json& v, const std::string& source, const std::string& path);
std::int64_t json_integer(const Json& v, const std::string& source, const std::string& path);

}  // namespace edgeadapt::runner::detail
