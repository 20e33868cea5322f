// Small readers for the array files the examples take: a .npy (format versions 1-3,
// C or Fortran order, float32 '<f4' or int64 '<i8', its data aligned to its values) and
// an .npz (an uncompressed zip of .npy members, as numpy.savez writes it), and
// `read_inputs`, which reads a bundle's model inputs from either as `edgeadapt run
// --input` does (edgeadapt/data/inputs.py): one array per model input named as the input (a
// one-input bundle also takes `x`, or a bare .npy), each of the input's dtype and
// shape, all with the same number of rows. Every size is checked against the bytes
// present before anything is allocated; errors name the file and the member.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "edgeadapt/runner.hpp"

namespace edgeadapt::examples {

struct NpyArray {
    runner::DType dtype = runner::DType::Float32;
    std::vector<std::int64_t> shape;
    std::vector<float> data;         // float32 arrays
    std::vector<std::int64_t> ints;  // int64 arrays

    const void* raw() const noexcept {
        return dtype == runner::DType::Int64 ? static_cast<const void*>(ints.data())
                                             : static_cast<const void*>(data.data());
    }
};

namespace npy_detail {

// The value of 'key' in the header dict, up to the next ',' or '}' outside brackets.
inline bool header_value(const std::string& header, const std::string& key, std::string& out) {
    const std::size_t at = header.find("'" + key + "':");
    if (at == std::string::npos) return false;
    std::size_t i = at + key.size() + 3;
    int depth = 0;
    std::size_t end = i;
    for (; end < header.size(); ++end) {
        const char c = header[end];
        if (c == '(') ++depth;
        if (c == ')') --depth;
        if (depth == 0 && (c == ',' || c == '}')) break;
    }
    out = header.substr(i, end - i);
    const auto trim = [](std::string& s) {
        s.erase(0, s.find_first_not_of(" "));
        s.erase(s.find_last_not_of(" ") + 1);
    };
    trim(out);
    return true;
}

// The whole of a regular file; checked before opening: opening a FIFO would block.
inline runner::Error read_file(const std::filesystem::path& path, std::string& bytes) {
    const std::string src = path.string();
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (!std::filesystem::exists(status)) return {runner::Code::Io, src + ": file not found"};
    if (!std::filesystem::is_regular_file(status)) return {runner::Code::Io, src + ": not a regular file"};
    std::ifstream in(path, std::ios::binary);
    if (!in.is_open()) return {runner::Code::Io, src + ": cannot open the file"};
    bytes.assign((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) return {runner::Code::Io, src + ": cannot read the file"};
    return {};
}

// Copy the values of an array of `shape` (C order, or Fortran order when `fortran`)
// to `out` in C order.
inline void copy_c_order(const char* data, const std::vector<std::int64_t>& shape,
                         std::size_t item, bool fortran, void* out) {
    std::size_t count = 1;
    for (std::int64_t d : shape) count *= static_cast<std::size_t>(d);
    auto* dst = static_cast<char*>(out);
    if (!fortran || shape.size() < 2) {
        std::memcpy(dst, data, count * item);
        return;
    }
    // walk the C-order index like an odometer, keeping the element's Fortran offset
    const std::size_t rank = shape.size();
    std::vector<std::size_t> stride(rank, 1), index(rank, 0);
    for (std::size_t k = 1; k < rank; ++k) stride[k] = stride[k - 1] * static_cast<std::size_t>(shape[k - 1]);
    std::size_t f = 0;
    for (std::size_t c = 0; c < count; ++c) {
        std::memcpy(dst + c * item, data + f * item, item);
        for (std::size_t k = rank; k-- > 0;) {
            f += stride[k];
            if (++index[k] < static_cast<std::size_t>(shape[k])) break;
            f -= stride[k] * index[k];
            index[k] = 0;
        }
    }
}

// Parse the .npy held in bytes[off, off + size); `src` names it in errors.
inline runner::Error parse_npy(const std::string& file, std::size_t off, std::size_t size,
                               const std::string& src, NpyArray& out) {
    const auto bad = [&src](const std::string& what) {
        return runner::Error{runner::Code::Format, src + ": " + what};
    };
    const std::string_view bytes(file.data() + off, size);
    if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0)
        return bad("not a .npy file (no \\x93NUMPY magic)");
    const auto major = static_cast<unsigned char>(bytes[6]);
    if (major < 1 || major > 3) return bad("unsupported .npy version " + std::to_string(major));
    std::size_t len = 0, start = 0;
    const auto byte = [&bytes](std::size_t i) {
        return static_cast<std::size_t>(static_cast<unsigned char>(bytes[i]));
    };
    if (major == 1) {
        len = byte(8) | byte(9) << 8;
        start = 10;
    } else {
        if (bytes.size() < 12) return bad("truncated header");
        len = byte(8) | byte(9) << 8 | byte(10) << 16 | byte(11) << 24;
        start = 12;
    }
    if (bytes.size() - start < len) return bad("truncated header");
    const std::string header(bytes.substr(start, len));
    std::string descr, order, shape;
    if (!header_value(header, "descr", descr) || !header_value(header, "fortran_order", order) ||
        !header_value(header, "shape", shape))
        return bad("header lacks descr, fortran_order or shape");
    NpyArray a;
    if (descr == "'<f4'") {
        a.dtype = runner::DType::Float32;
    } else if (descr == "'<i8'") {
        a.dtype = runner::DType::Int64;
    } else {
        return bad("dtype must be float32 ('<f4') or int64 ('<i8'), got " + descr);
    }
    const std::size_t item = runner::dtype_size(a.dtype);
    if (order != "False" && order != "True")
        return bad("fortran_order must be True or False, got " + order);
    const bool fortran = order == "True";
    if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')')
        return bad("cannot read shape " + shape);
    std::size_t count = 1;
    const std::string body = shape.substr(1, shape.size() - 2);
    std::size_t pos = 0;
    while (pos < body.size()) {
        std::size_t comma = body.find(',', pos);
        if (comma == std::string::npos) comma = body.size();
        std::string dim = body.substr(pos, comma - pos);
        dim.erase(0, dim.find_first_not_of(" "));
        dim.erase(dim.find_last_not_of(" ") + 1);
        pos = comma + 1;
        if (dim.empty()) continue;
        if (dim.find_first_not_of("0123456789") != std::string::npos || dim.size() > 12)
            return bad("cannot read shape " + shape);
        a.shape.push_back(std::stoll(dim));
        const auto d = static_cast<std::size_t>(a.shape.back());
        // no product can overflow: beyond the bytes present the file is short anyway
        if (d != 0 && count > (bytes.size() / item) / d)
            return bad("shape " + shape + " needs more data than the " + std::to_string(bytes.size()) +
                       " bytes present");
        count *= d;
    }
    const std::size_t data_bytes = bytes.size() - start - len;
    if (data_bytes != count * item)
        return bad("holds " + std::to_string(data_bytes) + " data bytes, shape " + shape + " needs " +
                   std::to_string(count * item));
    // numpy pads the header so the data is aligned; data at an odd offset is not an
    // array numpy maps as written (edgeadapt/data/inputs.py refuses it as well)
    if ((start + len) % item != 0)
        return bad("its data starts at byte " + std::to_string(start + len) + ", not aligned to its " +
                   std::to_string(item) + "-byte values (write it with numpy.save)");
    const char* data = bytes.data() + start + len;
    if (a.dtype == runner::DType::Int64) {
        a.ints.resize(count);
        if (count) copy_c_order(data, a.shape, item, fortran, a.ints.data());
    } else {
        a.data.resize(count);
        if (count) copy_c_order(data, a.shape, item, fortran, a.data.data());
    }
    out = std::move(a);
    return {};
}

inline std::uint32_t crc32(const char* p, std::size_t n) {
    static const std::array<std::uint32_t, 256> table = [] {
        std::array<std::uint32_t, 256> t{};
        for (std::uint32_t i = 0; i < 256; ++i) {
            std::uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        return t;
    }();
    std::uint32_t c = 0xFFFFFFFFu;
    for (std::size_t i = 0; i < n; ++i) c = table[(c ^ static_cast<unsigned char>(p[i])) & 0xff] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

// Little-endian reads, bounds-checked by the caller.
inline std::uint64_t le(const std::string& b, std::size_t at, int n) {
    std::uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(b[at + static_cast<std::size_t>(i)]);
    return v;
}

}  // namespace npy_detail

inline runner::Error read_npy(const std::filesystem::path& path, NpyArray& out) noexcept {
    try {
        std::string bytes;
        if (auto e = npy_detail::read_file(path, bytes)) return e;
        return npy_detail::parse_npy(bytes, 0, bytes.size(), path.string(), out);
    } catch (const std::exception& e) {
        return {runner::Code::Format, path.string() + ": " + e.what()};
    }
}

// One member of an .npz: its key (the member name without ".npy") and the array.
struct NpzMember {
    std::string key;
    NpyArray array;
};

// Read every member of the .npz at `path` whose key is in `keys` (all when empty),
// in the archive's order. Refused: anything but a zip of stored (uncompressed) .npy
// members, encrypted or compressed members (numpy.savez_compressed: save with
// numpy.savez), a member whose CRC-32 or sizes disagree, duplicate keys.
inline runner::Error read_npz(const std::filesystem::path& path, const std::vector<std::string>& keys,
                              std::vector<NpzMember>& out) noexcept {
    const std::string src = path.string();
    const auto bad = [&src](const std::string& what) {
        return runner::Error{runner::Code::Format, src + ": " + what};
    };
    try {
        std::string b;
        if (auto e = npy_detail::read_file(path, b)) return e;
        if (b.compare(0, 6, "\x93NUMPY") == 0) return bad("expected an .npz archive, got a single .npy array");
        if (b.size() < 22 || b.compare(0, 4, "PK\x03\x04") != 0)
            return bad("not a readable .npz file (no zip archive header)");
        using npy_detail::le;
        // the end of central directory record: the last one, within its comment's reach
        std::size_t eocd = std::string::npos;
        const std::size_t lowest = b.size() > 22 + 65535 ? b.size() - 22 - 65535 : 0;
        for (std::size_t at = b.size() - 22 + 1; at-- > lowest;) {
            if (le(b, at, 4) == 0x06054b50u) {
                eocd = at;
                break;
            }
        }
        if (eocd == std::string::npos) return bad("not a readable .npz file (no end of central directory)");
        std::uint64_t entries = le(b, eocd + 10, 2), cd_size = le(b, eocd + 12, 4),
                      cd_offset = le(b, eocd + 16, 4);
        if (le(b, eocd + 4, 2) != 0 || le(b, eocd + 6, 2) != 0) return bad("multi-disk zip archives are not read");
        if (entries == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_offset == 0xFFFFFFFFu) {
            // zip64: the locator sits just before the record and points at the zip64 record
            if (eocd < 20 || le(b, eocd - 20, 4) != 0x07064b50u) return bad("corrupt zip64 end of central directory");
            const std::uint64_t rec = le(b, eocd - 20 + 8, 8);
            if (rec > b.size() || b.size() - rec < 56 || le(b, static_cast<std::size_t>(rec), 4) != 0x06064b50u)
                return bad("corrupt zip64 end of central directory");
            entries = le(b, static_cast<std::size_t>(rec) + 32, 8);
            cd_size = le(b, static_cast<std::size_t>(rec) + 40, 8);
            cd_offset = le(b, static_cast<std::size_t>(rec) + 48, 8);
        }
        if (cd_offset > b.size() || cd_size > b.size() - cd_offset) return bad("corrupt central directory (past the end of the file)");
        if (entries > cd_size / 46) return bad("corrupt central directory (" + std::to_string(entries) + " entries claimed)");
        std::vector<NpzMember> members;
        std::vector<std::string> seen;
        std::size_t at = static_cast<std::size_t>(cd_offset);
        const std::size_t cd_end = static_cast<std::size_t>(cd_offset + cd_size);
        for (std::uint64_t n = 0; n < entries; ++n) {
            if (cd_end - at < 46 || le(b, at, 4) != 0x02014b50u) return bad("corrupt central directory entry");
            const std::uint64_t flags = le(b, at + 8, 2), method = le(b, at + 10, 2);
            const auto crc = static_cast<std::uint32_t>(le(b, at + 16, 4));
            std::uint64_t csize = le(b, at + 20, 4), usize = le(b, at + 24, 4), local = le(b, at + 42, 4);
            const std::size_t name_len = le(b, at + 28, 2), extra_len = le(b, at + 30, 2),
                              comment_len = le(b, at + 32, 2);
            if (cd_end - at - 46 < name_len + extra_len + comment_len) return bad("corrupt central directory entry");
            const std::string name = b.substr(at + 46, name_len);
            // zip64 sizes and offset, for the fields saturated at 0xFFFFFFFF, in this order
            std::size_t x = at + 46 + name_len;
            const std::size_t x_end = x + extra_len;
            while (x_end - x >= 4) {
                const std::uint64_t id = le(b, x, 2), len = le(b, x + 2, 2);
                if (x_end - x - 4 < len) return bad(name + ": corrupt zip extra field");
                if (id == 1) {
                    std::size_t f = x + 4;
                    for (std::uint64_t* field : {&usize, &csize, &local}) {
                        if (*field != 0xFFFFFFFFu) continue;
                        if (f + 8 > x + 4 + len) return bad(name + ": corrupt zip64 extra field");
                        *field = le(b, f, 8);
                        f += 8;
                    }
                }
                x += 4 + len;
            }
            at += 46 + name_len + extra_len + comment_len;
            std::string key = name;
            if (key.size() > 4 && key.compare(key.size() - 4, 4, ".npy") == 0) key.resize(key.size() - 4);
            for (const auto& k : seen)
                if (k == key) return bad(key + ": the archive holds it twice");
            seen.push_back(key);
            bool wanted = keys.empty();
            for (const auto& k : keys) wanted = wanted || k == key;
            if (!wanted) continue;
            const std::string msrc = src + ": " + key;
            if (flags & 1) return {runner::Code::Format, msrc + ": encrypted members are not read"};
            if (method != 0)
                return {runner::Code::Format, msrc + ": compressed member (zip method " + std::to_string(method) +
                                                  "); write the npz with numpy.savez, not savez_compressed"};
            if (csize != usize) return {runner::Code::Format, msrc + ": stored member with differing sizes"};
            if (local > b.size() || b.size() - local < 30 || le(b, static_cast<std::size_t>(local), 4) != 0x04034b50u)
                return {runner::Code::Format, msrc + ": corrupt local zip header"};
            const auto lo = static_cast<std::size_t>(local);
            const std::size_t local_name = le(b, lo + 26, 2);
            const std::size_t data = lo + 30 + local_name + le(b, lo + 28, 2);
            if (data > b.size() || local_name != name_len || b.compare(lo + 30, name_len, name) != 0)
                return {runner::Code::Format, msrc + ": local zip header does not match the central directory"};
            if (b.size() - data < usize)
                return {runner::Code::Format, msrc + ": corrupt or truncated member (needs " +
                                                  std::to_string(usize) + " bytes past offset " +
                                                  std::to_string(data) + ")"};
            const auto size = static_cast<std::size_t>(usize);
            if (npy_detail::crc32(b.data() + data, size) != crc)
                return {runner::Code::Format, msrc + ": CRC-32 mismatch (the member is corrupt)"};
            NpzMember m;
            m.key = key;
            if (auto e = npy_detail::parse_npy(b, data, size, msrc, m.array)) return e;
            members.push_back(std::move(m));
        }
        out = std::move(members);
        return {};
    } catch (const std::exception& e) {
        return bad(e.what());
    }
}

// A bundle's model inputs read from a file: one array per input, in the manifest's order.
struct InputArrays {
    std::vector<NpyArray> arrays;
    std::int64_t rows = 0;
};

// Read the model inputs of `inputs` (a bundle's) from the .npy or .npz at `path` (told
// apart by their magic bytes), checked as edgeadapt/data/inputs.py `read_batch` checks
// them: names, exact dtypes (int64 token ids stay int64), shapes after the batch axis,
// one common, non-zero row count and finite floats (a bad row named from the file's first).
inline runner::Error read_inputs(const std::filesystem::path& path,
                                 const std::vector<runner::InputSpec>& inputs, InputArrays& out) noexcept {
    const std::string src = path.string();
    try {
        std::string names;
        for (const auto& s : inputs) names += (names.empty() ? "" : ", ") + s.name;
        std::string head(6, '\0');
        {
            std::error_code ec;
            const auto status = std::filesystem::status(path, ec);
            if (!std::filesystem::exists(status)) return {runner::Code::Io, src + ": file not found"};
            if (!std::filesystem::is_regular_file(status))
                return {runner::Code::Io, src + ": not a regular file"};
            std::ifstream in(path, std::ios::binary);
            if (!in.is_open()) return {runner::Code::Io, src + ": cannot open the file"};
            in.read(head.data(), 6);
            head.resize(static_cast<std::size_t>(in.gcount()));
        }
        InputArrays got;
        if (head == "\x93NUMPY") {
            if (inputs.size() != 1)
                return {runner::Code::Input,
                        src + ": the bundle has " + std::to_string(inputs.size()) + " inputs (" + names +
                            "): give an .npz holding one array per input, named as the input"};
            NpyArray a;
            if (auto e = read_npy(path, a)) return e;
            got.arrays.push_back(std::move(a));
        } else {
            std::vector<NpzMember> members;
            std::vector<std::string> keys;
            for (const auto& s : inputs) keys.push_back(s.name);
            if (inputs.size() == 1) keys.push_back("x");
            if (auto e = read_npz(path, keys, members)) return e;
            std::string has;
            for (const auto& m : members) has += (has.empty() ? "" : ", ") + m.key;
            for (const auto& s : inputs) {
                const NpzMember* found = nullptr;
                const NpzMember* x = nullptr;
                for (const auto& m : members) {
                    if (m.key == s.name) found = &m;
                    if (m.key == "x") x = &m;
                }
                if (inputs.size() == 1 && s.name != "x" && found && x)
                    return {runner::Code::Input, src + ": holds both 'x' and '" + s.name +
                                                     "'; keep one array for the input"};
                if (inputs.size() == 1 && !found) found = x;
                if (!found)
                    return {runner::Code::Input,
                            src + ": " + s.name + ": missing array for the bundle's input" +
                                (inputs.size() == 1 ? " (or 'x')" : "") + " (bundle inputs: " + names +
                                "; the file's arrays read: " + (has.empty() ? "none" : has) + ")"};
                got.arrays.push_back(found->array);
            }
        }
        for (std::size_t k = 0; k < inputs.size(); ++k) {
            const runner::InputSpec& spec = inputs[k];
            const NpyArray& a = got.arrays[k];
            const std::string where = src + ": " + spec.name + ": ";
            if (spec.dtype != runner::dtype_name(a.dtype))
                return {runner::Code::Input, where + "expected dtype " + spec.dtype + ", got " +
                                                 runner::dtype_name(a.dtype)};
            bool ok = a.shape.size() == spec.dims.size() + 1;
            for (std::size_t d = 0; ok && d < spec.dims.size(); ++d) ok = a.shape[d + 1] == spec.dims[d];
            std::string want = "[N", have = "[";
            for (auto d : spec.dims) want += ", " + std::to_string(d);
            for (std::size_t d = 0; d < a.shape.size(); ++d) have += (d ? ", " : "") + std::to_string(a.shape[d]);
            if (!ok) return {runner::Code::Input, where + "expected shape " + want + "], got " + have + "]"};
            if (a.shape[0] < 1) return {runner::Code::Input, where + "empty batch (0 rows)"};
            if (k > 0 && a.shape[0] != got.rows)
                return {runner::Code::Input, where + "has " + std::to_string(a.shape[0]) + " rows, '" +
                                                 inputs[0].name + "' has " + std::to_string(got.rows) +
                                                 ": every input needs the same number of rows"};
            got.rows = a.shape[0];
            if (a.dtype != runner::DType::Float32) continue;
            // rows counted from the file's first, as `edgeadapt run` names them
            const std::int64_t row = spec.row_elements();
            std::int64_t bad = 0, first = -1;
            for (std::int64_t b = 0; b < got.rows; ++b) {
                bool finite = true;
                for (std::int64_t e = 0; e < row; ++e)
                    finite = finite && std::isfinite(a.data[static_cast<std::size_t>(b * row + e)]);
                if (!finite && bad++ == 0) first = b;
            }
            if (bad)
                return {runner::Code::Input, where + "holds NaN or infinity in " + std::to_string(bad) +
                                                 " row(s), first row " + std::to_string(first)};
        }
        out = std::move(got);
        return {};
    } catch (const std::exception& e) {
        return {runner::Code::Format, src + ": " + e.what()};
    }
}

}  // namespace edgeadapt::examples
