import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// Settings of one HTTP/1.1 server connection. The defaults suit an ingress: keep-alive
/// connections are cheap to hold for a minute, and one request's unread body costs at most a few
/// hundred KiB however fast its client sends.
public struct HTTP1Configuration: Sendable, Hashable {
    /// A keep-alive connection with no request in progress for this long is closed (RFC 9112
    /// §9.8 lets either side close an idle connection at any time); nil keeps it open. The same
    /// limit applies to a connection that never completes its first request head.
    public var idleTimeout: TimeAmount? = .seconds(60)
    /// Reading from the socket stops while a request has this many body bytes received and not
    /// yet read by its handler, and resumes as the handler catches up: TCP's window then holds
    /// the client back, so a slow handler costs bounded memory (HTTP/1.1 has no flow control of
    /// its own).
    public var bodyBufferHighWatermark: Int = 256 << 10
    /// The largest request head (all field names and values) accepted; a larger one is answered
    /// with 400 and the connection closes.
    public var maxHeaderBytes: Int = 64 << 10
    /// The most header fields one request may carry; more is answered with 431 (RFC 6585 §5)
    /// and the connection closes. Apache's `LimitRequestFields` default; no real client comes
    /// near it, and each field costs work to convert and forward.
    public var maxHeaderCount: Int = 100
    /// A request head must be complete this long after its first bytes arrive, or the connection
    /// closes: a client that sends its head a byte at a time (slowloris) holds a connection for
    /// at most this long, not for `idleTimeout` after every byte. nil: only `idleTimeout` applies.
    public var requestHeadTimeout: TimeAmount? = .seconds(10)
    /// A request body must keep arriving: past this long with none of it (while the server is
    /// reading, not while it holds back for a slow handler), the client is answered 408 if no
    /// response has begun, and the connection closes; the handler's body read fails with
    /// `HTTP2Error.timeout`. nil: only the idle and `request_timeout_s` limits apply.
    public var bodyReadTimeout: TimeAmount? = .seconds(30)
    /// The largest decompressed request body accepted: a body sent with `content-encoding: gzip`
    /// or `deflate` is decoded as it is read, and one that would decode to more fails its reader
    /// with `HTTP2Error.bodyTooLarge` (a decompression bomb answers 413).
    public var maxDecompressedBodySize: Int = 100 << 20

    public init() {}
}

/// Writes the response to one HTTP/1.1 request. Handlers run on their connection's event loop,
/// so these calls reach the connection directly; from elsewhere they hop there.
///
/// Framing follows RFC 9112 §6: `respond` sends a `content-length`; a head written with
/// `writeHead` and no `content-length` starts a chunked body (HTTP/1.1 clients) that `finish`
/// ends. `write` returns once the socket has room, so a slow client slows its handler down.
/// Responses to HEAD requests, and 1xx/204/304 responses, carry no body: whatever is written
/// for them is dropped (RFC 9110 §9.3.2, §15.3.5, §15.4.5).
public struct HTTP1ResponseWriter: HTTPResponseWriter {
    let connection: NIOLoopBound<HTTP1ServerConnection>
    let exchangeID: UInt64

    /// Sends the whole response at once with its `content-length`. Trailers cannot travel in a
    /// body framed by length (RFC 9112 §7.1.2 puts them in the chunked coding), so they are
    /// dropped.
    public func respond(_ head: HTTPResponse, body: ByteBuffer? = nil, trailers: HTTPFields? = nil) async throws {
        let id = self.exchangeID
        try await self.connection.perform { try $0.respond(id, head: head, body: body) }
    }

    /// Sends the response head. Without `content-length` the body is chunked (or, for an
    /// HTTP/1.0 client, ends when the connection closes: RFC 9112 §6.3).
    public func writeHead(_ head: HTTPResponse) async throws {
        let id = self.exchangeID
        try await self.connection.perform { try $0.writeHead(id, head: head) }
    }

    /// Sends one body chunk (a 200 head first, if none was sent); returns once the socket has
    /// room for more. More bytes than the head's `content-length` announced are refused.
    public func write(_ chunk: ByteBuffer) async throws {
        let id = self.exchangeID
        try await self.connection.performWrite { try $0.write(id, chunk: chunk) }
    }

    /// Ends the body: the last chunk, with trailers if given, when chunked (RFC 9112 §7.1.2).
    /// A body shorter than its `content-length` cannot be ended honestly: the connection closes
    /// so the client sees it truncated, and this throws.
    public func finish(trailers: HTTPFields? = nil) async throws {
        let id = self.exchangeID
        try await self.connection.perform { try $0.finish(id, trailers: trailers) }
    }
}

/// An HTTP/1.1 server (RFC 9112) on SwiftNIO's HTTP/1 codec. Each request runs its handler in
/// its own task on its connection's event loop; requests on one connection are answered in
/// order (pipelined requests wait for the response before them, RFC 9112 §9.3.2).
///
/// - Request bodies stream to the handler with backpressure (`bodyBufferHighWatermark`); a body
///   the handler leaves unread is drained for the next request, or the connection closes when
///   more than 1 MiB of it is left.
/// - `Expect: 100-continue` (RFC 9110 §10.1.1) is answered with `100 Continue` once the handler
///   waits without having answered (in practice: its first read of the body) or starts a
///   streamed response; a handler that answers at once with `respond` (a refusal) never makes
///   the client send the body, and the connection then closes.
/// - A handler that returns without answering gets a 500; one that throws before the head, a 500
///   with a short text body (400/413 for bad or oversized bodies); one that throws after the
///   head has its connection cut, so the client sees the body truncated.
public final class HTTP1Server: ListeningServer, @unchecked Sendable {
    public typealias Handler = @Sendable (HTTPServerRequest, HTTP1ResponseWriter) async throws -> Void

    /// Binds and starts serving. Port 0 picks a free port (read it back from `port`).
    public static func bind(
        host: String,
        port: Int,
        configuration: HTTP1Configuration = .init(),
        listener: ListenerConfiguration = .init(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "serve.wire.http1.server"),
        handler: @escaping Handler
    ) async throws -> HTTP1Server {
        let channels = try await ServerChannels.bind(host: host, port: port, eventLoopGroup: eventLoopGroup, listener: listener) { channel in
            try HTTP1ServerConnection.configure(
                channel.pipeline.syncOperations, configuration: configuration, logger: logger, handler: handler)
        }
        return HTTP1Server(channels: channels)
    }

}

// MARK: conversions between NIOHTTP1's heads and swift-http-types'

extension HTTPHeaders {
    /// Every field, in order, as HTTP/1 writes them: each value's bytes as they are, one scalar
    /// per byte (`FieldBytes`), which `HTTP1Codec`'s writers put on the wire unchanged.
    init(converting fields: HTTPFields) {
        self.init()
        self.reserveCapacity(fields.count)
        for field in fields {
            self.add(name: field.name.rawName, value: field.withUnsafeBytesOfValue { FieldBytes.string($0) })
        }
    }
}

extension HTTPFields {
    /// Every field of an HTTP/1 head, in order, values as the bytes that arrived (`FieldBytes`).
    /// The parser has checked the names are tokens; one that swift-http-types would still refuse
    /// is skipped rather than failing the message.
    init(converting headers: HTTPHeaders) {
        self.init()
        self.reserveCapacity(headers.count)
        for (name, value) in headers {
            guard let name = HTTPField.Name(name) else { continue }
            if FieldBytes.isASCII(value) {
                self.append(HTTPField(name: name, value: value))
            } else {
                self.append(HTTPField(name: name, lenientValue: FieldBytes.bytes(value)))
            }
        }
    }
}

extension HTTPHeaders {
    /// The message's `content-length`, when it has exactly one valid value (RFC 9112 §6.3:
    /// several differing values make the framing unreliable; NIO's parser refuses those).
    var contentLength: Int? {
        let values = self["content-length"]
        guard let first = values.first, values.allSatisfy({ $0 == first }) else { return nil }
        return Int(first.trimmingOWS())
    }

    /// Whether the message's body is chunked (RFC 9112 §7.1): `chunked` is the final coding.
    var isChunked: Bool {
        guard let last = self["transfer-encoding"].last else { return false }
        return last.split(separator: ",").last?.trimmingOWS().lowercased() == "chunked"
    }

    /// Whether a `connection` field lists `token` (RFC 9110 §7.6.1), case-insensitively.
    func connectionHas(_ token: String) -> Bool {
        self["connection"].contains { value in
            value.split(separator: ",").contains { $0.trimmingOWS().lowercased() == token }
        }
    }
}

extension StringProtocol {
    /// Without the optional whitespace (spaces and tabs) around a list element (RFC 9110 §5.6.3).
    func trimmingOWS() -> Substring {
        let isOWS: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        let view = self[...]
        guard let start = view.firstIndex(where: { !isOWS($0) }), let end = view.lastIndex(where: { !isOWS($0) }) else {
            return Substring()
        }
        return Substring(view[start...end])
    }
}

extension HTTPResponse.Status {
    /// 1xx, 204 and 304 responses never have a body (RFC 9110 §6.4.1).
    var allowsBody: Bool {
        !(100..<200).contains(self.code) && self.code != 204 && self.code != 304
    }
}
