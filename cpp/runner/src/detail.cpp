#include "detail.hpp"

#include <openssl/evp.h>

#include <cmath>
#include <fstream>
#include <memory>
#include <new>
#include <set>
#include <vector>

namespace edgeadapt::runner {

const char* code_string(Code code) noexcept {
    switch (code) {
        case Code::Ok: return "ok";
        case Code::Io: return "file missing or unreadable";
        case Code::Format: return "invalid file";
        case Code::Integrity: return "file altered (sha256 mismatch)";
        case Code::UnsafePath: return "path leaves the bundle";
        case Code::Mismatch: return "plan made for another bundle";
        case Code::Input: return "bad argument or input";
        case Code::Backend: return "backend failure";
        case Code::Unavailable: return "backend not compiled in";
    }
    return "unknown code";
}

}  // namespace edgeadapt::runner

namespace edgeadapt::runner::detail {

std::string where(const std::string& source, const std::string& path, const std::string& message) {
    std::string out;
    for (const std::string* part : {&source, &path}) {
        if (!part->empty()) out += *part + ": ";
    }
    return out + message;
}

void fail(Code code, const std::string& source, const std::string& path, const std::string& message) {
    throw Failure(code, where(source, path, message));
}

Error guard(Code fallback, const std::string& context, const std::function<void()>& body) noexcept {
    try {
        body();
        return {};
    } catch (const Failure& f) {
        return f.error();
    } catch (const std::bad_alloc&) {
        return {fallback, where(context, "", "out of memory")};
    } catch (const std::exception& e) {
        return {fallback, where(context, "", e.what())};
    } catch (...) {
        return {fallback, where(context, "", "unknown error")};
    }
}

std::string read_bytes(const std::filesystem::path& path, std::uintmax_t max_bytes) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
        fail(Code::Io, path.string(), "",
             std::filesystem::exists(path, ec) ? "not a regular file" : "file not found");
    }
    std::ifstream in(path, std::ios::binary);
    if (!in.is_open()) fail(Code::Io, path.string(), "", "cannot read the file");
    std::string bytes;
    std::vector<char> chunk(1 << 20);
    // at most one byte past the limit: a larger file is refused without reading it all
    while (in && bytes.size() <= max_bytes) {
        const std::uintmax_t left = max_bytes - bytes.size();
        const std::size_t want = left >= chunk.size() ? chunk.size() : static_cast<std::size_t>(left) + 1;
        in.read(chunk.data(), static_cast<std::streamsize>(want));
        bytes.append(chunk.data(), static_cast<std::size_t>(in.gcount()));
    }
    if (in.bad()) fail(Code::Io, path.string(), "", "cannot read the file");
    if (bytes.size() > max_bytes)
        fail(Code::Format, path.string(), "",
             "larger than " + std::to_string(max_bytes >> 20) + " MiB");
    return bytes;
}

namespace {

struct DigestDeleter {
    void operator()(EVP_MD_CTX* ctx) const noexcept { EVP_MD_CTX_free(ctx); }
};

class Sha256 {
  public:
    Sha256() : ctx_(EVP_MD_CTX_new()) {
        if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1)
            throw std::runtime_error("OpenSSL cannot start a sha256 digest");
    }
    void update(const char* data, std::size_t n) {
        if (EVP_DigestUpdate(ctx_.get(), data, n) != 1)
            throw std::runtime_error("OpenSSL sha256 update failed");
    }
    std::string hex() {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int len = 0;
        if (EVP_DigestFinal_ex(ctx_.get(), md, &len) != 1)
            throw std::runtime_error("OpenSSL sha256 final failed");
        static const char digits[] = "0123456789abcdef";
        std::string out;
        for (unsigned int i = 0; i < len; ++i) {
            out += digits[md[i] >> 4];
            out += digits[md[i] & 15];
        }
        return out;
    }

  private:
    std::unique_ptr<EVP_MD_CTX, DigestDeleter> ctx_;
};

}  // namespace

std::string sha256_hex(const std::string& bytes) {
    Sha256 h;
    h.update(bytes.data(), bytes.size());
    return h.hex();
}

std::string sha256_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in.is_open()) fail(Code::Io, path.string(), "", "cannot read the file");
    Sha256 h;
    std::vector<char> chunk(1 << 20);
    while (in) {
        in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
        h.update(chunk.data(), static_cast<std::size_t>(in.gcount()));
    }
    if (in.bad()) fail(Code::Io, path.string(), "", "read error");
    return h.hex();
}

bool is_sha256_hex(const std::string& s) noexcept {
    if (s.size() != 64) return false;
    for (char c : s)
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    return true;
}

namespace {

// A first pass over the document that refuses what nlohmann would accept silently but
// edgeadapt/formats/jsonio.py refuses: an object with a key twice (nlohmann keeps the last) and
// nesting deeper than kMaxJsonDepth (as Python's RecursionError would).
class StrictSax final : public nlohmann::json_sax<Json> {
  public:
    std::string problem;

    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override {
        keys_.emplace_back();
        return deeper();
    }
    bool key(string_t& k) override {
        if (keys_.back().insert(k).second) return true;
        problem = "duplicate key '" + k + "' in an object (each key may appear once)";
        return false;
    }
    bool end_object() override {
        keys_.pop_back();
        return true;
    }
    bool start_array(std::size_t) override {
        keys_.emplace_back();
        return deeper();
    }
    bool end_array() override {
        keys_.pop_back();
        return true;
    }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
        problem = std::string("invalid JSON: ") + e.what();
        return false;
    }

  private:
    bool deeper() {
        if (keys_.size() <= kMaxJsonDepth) return true;
        problem = "nested deeper than " + std::to_string(kMaxJsonDepth) + " levels";
        return false;
    }
    std::vector<std::set<std::string>> keys_;
};

}  // namespace

Json parse_document(const std::string& bytes, const std::string& source, const std::string& format,
                    std::initializer_list<std::int64_t> versions) {
    if (bytes.compare(0, 3, "\xEF\xBB\xBF") == 0)
        fail(Code::Format, source, "", "invalid JSON: starts with a UTF-8 byte order mark");
    Json doc;
    try {
        StrictSax sax;
        if (!Json::sax_parse(bytes, &sax))
            fail(Code::Format, source, "", sax.problem.empty() ? "invalid JSON" : sax.problem);
        doc = Json::parse(bytes);
    } catch (const Json::exception& e) {  // parse_error, or out_of_range for 1e400
        fail(Code::Format, source, "", std::string("invalid JSON: ") + e.what());
    }
    if (!doc.is_object()) fail(Code::Format, source, "$", "expected a JSON object");
    const auto got = doc.find("format");
    if (got == doc.end() || !got->is_string() || got->get<std::string>() != format) {
        fail(Code::Format, source, "$.format",
             "expected format '" + format + "', got " + (got == doc.end() ? "none" : got->dump()));
    }
    const auto ver = doc.find("version");
    bool known = false;
    if (ver != doc.end() && ver->is_number_integer()) {
        for (std::int64_t v : versions) known = known || ver->get<std::int64_t>() == v;
    }
    if (!known) {
        std::string list;
        for (std::int64_t v : versions) list += (list.empty() ? "" : ", ") + std::to_string(v);
        fail(Code::Format, source, "$.version",
             "unsupported version " + (ver == doc.end() ? std::string("none") : ver->dump()) +
                 " (this runner reads [" + list + "])");
    }
    return doc;
}

double finite_number(const Json& v, const std::string& source, const std::string& path) {
    if (!v.is_number()) fail(Code::Format, source, path, "expected a number, got " + v.dump());
    const double d = v.get<double>();
    if (!std::isfinite(d)) fail(Code::Format, source, path, "must be a finite number");
    return d;
}

std::int64_t json_integer(const Json& v, const std::string& source, const std::string& path) {
    if (!v.is_number_integer()) fail(Code::Format, source, path, "expected an integer, got " + v.dump());
    if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
        fail(Code::Format, source, path, "integer out of range");
    return v.get<std::int64_t>();
}

Fields::Fields(const Json& obj, std::string source, std::string path)
    : obj_(obj), source_(std::move(source)), path_(std::move(path)) {
    if (!obj_.is_object()) fail("expected an object");
}

void Fields::fail(const std::string& message, const std::string& key) const {
    fail_at(key.empty() ? path_ : at(key), message);
}

void Fields::fail_at(const std::string& path, const std::string& message) const {
    detail::fail(Code::Format, source_, path, message);
}

const Json& Fields::get(const std::string& key) const {
    const auto it = obj_.find(key);
    if (it == obj_.end()) fail("missing required field", key);
    return *it;
}

std::string Fields::str(const std::string& key, bool non_empty) const {
    const Json& v = get(key);
    if (!v.is_string()) fail("expected a string, got " + v.dump(), key);
    std::string s = v.get<std::string>();
    if (non_empty && s.empty()) fail("must not be empty", key);
    return s;
}

std::string Fields::optional_str(const std::string& key) const {
    const Json& v = get(key);
    if (v.is_null()) return {};
    if (!v.is_string() || v.get<std::string>().empty())
        fail("expected a non-empty string or null, got " + v.dump(), key);
    return v.get<std::string>();
}

std::int64_t Fields::integer(const std::string& key) const {
    return json_integer(get(key), source_, at(key));
}

double Fields::number(const std::string& key) const {
    return finite_number(get(key), source_, at(key));
}

const Json& Fields::list(const std::string& key) const {
    const Json& v = get(key);
    if (!v.is_array()) fail("expected a list, got " + v.dump(), key);
    return v;
}

const Json& Fields::object(const std::string& key) const {
    const Json& v = get(key);
    if (!v.is_object()) fail("expected an object", key);
    return v;
}

Fields Fields::child(const std::string& key) const { return Fields(object(key), source_, at(key)); }

Fields Fields::item(const std::string& key, std::size_t index) const {
    return Fields(list(key).at(index), source_, at(key, index));
}

}  // namespace edgeadapt::runner::detail
