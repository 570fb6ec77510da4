import HTTPTypes

/// Which fields of a message are connection-specific and must not travel past this hop (RFC 9110
/// §7.6.1): `Connection` and every field it names, `Keep-Alive`, `Proxy-Connection`, `TE`,
/// `Transfer-Encoding` and `Upgrade`. HTTP/2 forbids them (RFC 9113 §8.2.2: a peer resets a
/// stream that carries one), except `TE: trailers`. One rule for both users: the HTTP/2 header
/// block (which keeps `TE: trailers`) and the proxy, which drops `TE` whatever it says, since it
/// asks for nothing on the client's behalf.
public struct ConnectionSpecificFields: Sendable {
    /// The fields `Connection` names; usually none, so the common case pays one lookup.
    private let named: Set<String>
    private let keepsTETrailers: Bool

    static let always: Set<String> = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"]

    public init(of fields: HTTPFields, keepingTETrailers: Bool) {
        var named: Set<String> = []
        for value in fields[values: .connection] {
            for token in value.split(separator: ",") {
                let name = token.trimmingOWS().lowercased()
                if !name.isEmpty { named.insert(name) }
            }
        }
        self.named = named
        self.keepsTETrailers = keepingTETrailers
    }

    /// Whether `field` stays on this hop.
    @inline(__always)
    public func contains(_ field: HTTPField) -> Bool {
        let name = field.name.canonicalName
        // Most names are ruled out by their length, without hashing.
        switch name.utf8.count {
        case 7, 10, 16, 17: if Self.always.contains(name) { return true }
        case 2 where name == "te": return !(self.keepsTETrailers && field.value.trimmingOWS().lowercased() == "trailers")
        default: break
        }
        return !self.named.isEmpty && self.named.contains(name)
    }
}

extension HTTPFields {
    /// These fields without the connection-specific ones (`ConnectionSpecificFields`), as a
    /// proxy forwards them: `TE` goes too.
    public var removingConnectionSpecific: HTTPFields {
        let specific = ConnectionSpecificFields(of: self, keepingTETrailers: false)
        var kept = HTTPFields()
        for field in self where !specific.contains(field) { kept.append(field) }
        return kept
    }
}
