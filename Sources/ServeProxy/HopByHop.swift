import HTTPTypes

/// Connection-specific fields, which describe one hop and must not travel further (RFC 9110
/// §7.6.1): `Connection` and every field it names, `Keep-Alive`, `Proxy-Connection`, `TE`,
/// `Transfer-Encoding` and `Upgrade`. HTTP/2 forbids them (RFC 9113 §8.2.2: a peer resets a
/// stream that carries one; only `TE: trailers` is allowed, and this proxy asks for no
/// trailers on the client's behalf), and a child process would take them as said to itself.
enum HopByHop {
    static let proxyConnection = HTTPField.Name("proxy-connection")!
    static let keepAlive = HTTPField.Name("keep-alive")!

    /// `fields` without the connection-specific ones.
    static func removing(from fields: HTTPFields) -> HTTPFields {
        var named: Set<String> = [
            HTTPField.Name.connection.canonicalName, Self.keepAlive.canonicalName, Self.proxyConnection.canonicalName,
            HTTPField.Name.te.canonicalName, HTTPField.Name.transferEncoding.canonicalName, HTTPField.Name.upgrade.canonicalName,
        ]
        for value in fields[values: .connection] {
            for token in value.split(separator: ",") {
                let name = Self.trimmed(token).lowercased()
                if !name.isEmpty { named.insert(name) }
            }
        }
        var kept = HTTPFields()
        for field in fields where !named.contains(field.name.canonicalName) {
            kept.append(field)
        }
        return kept
    }

    private static func trimmed(_ text: Substring) -> Substring {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = text.firstIndex(where: { !isSpace($0) }), let last = text.lastIndex(where: { !isSpace($0) }) else { return "" }
        return text[first...last]
    }
}
