import HTTPTypes
import NIOCore

/// A request received by a server (HTTP/2 or HTTP/1.1): its head and its body, streamed.
public struct HTTPServerRequest: Sendable {
    public var head: HTTPRequest
    public var body: HTTPBody
    /// The peer's address, when known.
    public var remoteAddress: SocketAddress?
    /// Whether the request has a body at all, as its framing says: over HTTP/2, HEADERS without
    /// END_STREAM (with or without `content-length`, RFC 9113 §8.1); over HTTP/1.1, a
    /// `content-length` above 0 or the chunked coding (RFC 9112 §6.3). A proxy forwards a request
    /// without one as bodyless, and one with one even when no length is known. (A body that
    /// turns out empty still counts: it was framed.)
    public var hasBody: Bool

    public init(head: HTTPRequest, body: HTTPBody, remoteAddress: SocketAddress? = nil, hasBody: Bool = true) {
        self.head = head
        self.body = body
        self.remoteAddress = remoteAddress
        self.hasBody = hasBody
    }
}

/// A response received by an `HTTP2ClientConnection`: its head and its body, streamed.
public struct HTTP2Response: Sendable {
    public var head: HTTPResponse
    public var body: HTTPBody

    public init(head: HTTPResponse, body: HTTPBody) {
        self.head = head
        self.body = body
    }
}

/// Writes the response to one request, whichever protocol carried it.
public protocol HTTPResponseWriter: Sendable {
    /// Sends the whole response at once: head, body and optional trailers.
    func respond(_ head: HTTPResponse, body: ByteBuffer?, trailers: HTTPFields?) async throws
    /// Sends the response head; the body follows with `write` and `finish`.
    func writeHead(_ head: HTTPResponse) async throws
    /// Sends one body chunk; returns once there is room for more.
    func write(_ chunk: ByteBuffer) async throws
    /// Ends the body, with trailers where the protocol carries them.
    func finish(trailers: HTTPFields?) async throws
}

extension HTTPResponseWriter {
    public func respond(_ head: HTTPResponse, body: ByteBuffer? = nil) async throws {
        try await self.respond(head, body: body, trailers: nil)
    }

    public func finish() async throws {
        try await self.finish(trailers: nil)
    }

    /// A plain-text answer (`text/plain; charset=utf-8`): what a proxy or a node says itself.
    public func respond(_ status: HTTPResponse.Status, text: String) async throws {
        try await self.respond(
            HTTPResponse(status: status, headerFields: [.contentType: "text/plain; charset=utf-8"]), body: ByteBuffer(string: text), trailers: nil)
    }
}

/// A response a server writes itself rather than its handler: a status, and a line of plain text
/// that says why.
struct ServerAnswer {
    var status: HTTPResponse.Status
    var message: String

    /// The answer to a handler that threw before its response head went out, on HTTP/1.1 and
    /// HTTP/2 alike: 400 for a request body that could not be decoded, 413 for one over its limit,
    /// else 500.
    init(handlerFailure error: any Error) {
        switch error {
        case HTTP2Error.badBody(let reason):
            self.status = .badRequest
            self.message = "bad request body: \(reason)\n"
        case HTTP2Error.bodyTooLarge(let limit):
            self.status = .contentTooLarge
            self.message = "the request body is over the \(limit)-byte limit\n"
        default:
            self.status = .internalServerError
            self.message = "internal error: \(error)\n"
        }
    }
}
