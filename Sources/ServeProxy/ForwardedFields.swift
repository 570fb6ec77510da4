import HTTPTypes
import NIOCore

extension HTTPRequest {
    static let forwardedFor = HTTPField.Name("x-forwarded-for")!
    static let forwardedHost = HTTPField.Name("x-forwarded-host")!
    static let forwardedProto = HTTPField.Name("x-forwarded-proto")!

    /// Says who asked, as HTTP proxies do (the de-facto `X-Forwarded-*` fields; RFC 7239's
    /// `Forwarded` says the same in one field, but frameworks read these): the client's address
    /// is appended to `X-Forwarded-For`, and `X-Forwarded-Host` (the authority the client used,
    /// which also stays the request's own authority: HTTP/1.1 `Host` or HTTP/2 `:authority`) and
    /// `X-Forwarded-Proto` are set unless a proxy in front of this one set them already.
    public mutating func addForwardedFields(client: SocketAddress?, scheme: String = "http") {
        if let address = client?.ipAddress {
            if let earlier = self.headerFields[Self.forwardedFor], !earlier.isEmpty {
                self.headerFields[Self.forwardedFor] = earlier + ", " + address
            } else {
                self.headerFields[Self.forwardedFor] = address
            }
        }
        if self.headerFields[Self.forwardedHost] == nil, let authority = self.authority, !authority.isEmpty {
            self.headerFields[Self.forwardedHost] = authority
        }
        if self.headerFields[Self.forwardedProto] == nil {
            self.headerFields[Self.forwardedProto] = scheme
        }
    }
}
