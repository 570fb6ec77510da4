/// Secret comparison that takes the same time wherever the inputs first differ, so a peer that
/// times its refusals learns nothing about the cluster token byte by byte (the timing attack on
/// an early-exit `==`; RFC 6749 §10.10 asks for exactly this of token checks).
public enum ConstantTime {
    /// Whether `given` equals `expected`. The work depends only on the length of `given`, never
    /// on where a difference lies; a length difference is folded into the result rather than
    /// returned early. An empty `expected` matches nothing.
    public static func equals(_ given: some Collection<UInt8>, _ expected: some Collection<UInt8>) -> Bool {
        let secret = Array(expected)
        guard !secret.isEmpty else { return false }
        var difference = UInt64(truncatingIfNeeded: given.count ^ secret.count)
        var index = 0
        for byte in given {
            difference |= UInt64(byte ^ secret[index % secret.count])
            index += 1
        }
        return difference == 0
    }

    public static func equals(_ given: String?, _ expected: String) -> Bool {
        guard let given else { return false }
        return Self.equals(given.utf8, expected.utf8)
    }

    /// Whether an `Authorization` value is `Bearer <expected>` (RFC 6750 §2.1; the scheme name
    /// is case-insensitive, RFC 9110 §11.1). A missing value is simply not equal.
    public static func isBearer(_ authorization: String?, token expected: String) -> Bool {
        guard let authorization else { return false }
        let bytes = Array(authorization.utf8)
        let scheme = Array("bearer ".utf8)
        guard bytes.count >= scheme.count,
            zip(bytes.prefix(scheme.count), scheme).allSatisfy({ $0 | 0x20 == $1 })
        else { return false }
        return Self.equals(bytes.dropFirst(scheme.count), expected.utf8)
    }
}
