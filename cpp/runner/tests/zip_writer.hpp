// Tests only: an .npz as numpy.savez writes it (a zip of stored .npy members), built in
// memory, so the npz reader's tests and fuzz seeds need no Python.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "npy.hpp"

namespace edgeadapt::examples::testing {

// A version 1.0 .npy of `descr` ('<f4', '<i8') and `shape` (e.g. "(4, 6)") over `data`.
inline std::string npy_bytes(const std::string& descr, const std::string& shape, const std::string& data) {
    std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
    header.append(64 - (10 + header.size() + 1) % 64, ' ');
    header += '\n';
    std::string out = "\x93NUMPY\x01";
    out += '\0';
    out += static_cast<char>(header.size() & 0xff);
    out += static_cast<char>(header.size() >> 8);
    return out + header + data;
}

inline void put(std::string& s, std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) s += static_cast<char>((v >> (8 * i)) & 0xff);
}

// A zip of stored members (name, bytes), local headers then the central directory.
inline std::string zip_bytes(const std::vector<std::pair<std::string, std::string>>& members) {
    std::string out, central;
    for (const auto& [name, bytes] : members) {
        const std::uint32_t crc = npy_detail::crc32(bytes.data(), bytes.size());
        const std::size_t offset = out.size();
        put(out, 0x04034b50u, 4);
        put(out, 20, 2);  // version needed
        put(out, 0, 2);   // flags
        put(out, 0, 2);   // stored
        put(out, 0, 4);   // time, date
        put(out, crc, 4);
        put(out, bytes.size(), 4);
        put(out, bytes.size(), 4);
        put(out, name.size(), 2);
        put(out, 0, 2);
        out += name + bytes;
        put(central, 0x02014b50u, 4);
        put(central, 20, 2);
        put(central, 20, 2);
        put(central, 0, 2);
        put(central, 0, 2);
        put(central, 0, 4);
        put(central, crc, 4);
        put(central, bytes.size(), 4);
        put(central, bytes.size(), 4);
        put(central, name.size(), 2);
        put(central, 0, 2);
        put(central, 0, 2);
        put(central, 0, 2);
        put(central, 0, 2);
        put(central, 0, 4);
        put(central, offset, 4);
        central += name;
    }
    const std::size_t cd_offset = out.size();
    out += central;
    put(out, 0x06054b50u, 4);
    put(out, 0, 4);
    put(out, members.size(), 2);
    put(out, members.size(), 2);
    put(out, central.size(), 4);
    put(out, cd_offset, 4);
    put(out, 0, 2);
    return out;
}

}  // namespace edgeadapt::examples::testing
