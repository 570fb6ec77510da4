/// A 64-bit FNV-1a hash: tiny, stable across processes and platforms, good enough to tell
/// spec versions apart (not a security boundary).
enum FNV1a {
    static func hash(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return hash
    }

    static func hex(_ text: String) -> String {
        let digits = String(Self.hash(text), radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}
