import HTTPTypes
import NIOCore

/// A request received by an `HTTP2Server`: its head and its body, streamed.
public struct HTTP2Request: Sendable {
    public var head: HTTPRequest
    public var body: HTTP2Body
    /// The peer's address, when known.
    public var remoteAddress: SocketAddress?

    public init(head: HTTPRequest, body: HTTP2Body, remoteAddress: SocketAddress? = nil) {
        self.head = head
        self.body = body
        self.remoteAddress = remoteAddress
    }
}

/// A response received by an `HTTP2ClientConnection`: its head and its body, streamed.
public struct HTTP2Response: Sendable {
    public var head: HTTPResponse
    public var body: HTTP2Body

    public init(head: HTTPResponse, body: HTTP2Body) {
        self.head = head
        self.body = body
    }
}
