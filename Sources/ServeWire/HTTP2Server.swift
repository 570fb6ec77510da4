import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Writes the response to one request. Handlers run on their connection's event loop, so these
/// calls reach the connection directly; from elsewhere they hop there. `write` returns once the
/// stream's send queue has room, so a slow client slows its handler down.
public struct HTTP2ResponseWriter: HTTPResponseWriter {
    let connection: NIOLoopBound<HTTP2Connection>
    let streamID: Int32

    /// Sends the whole response at once: head, body and optional trailers. The body is
    /// compressed when the client accepts it and it is at least `compression.minimumSize`.
    public func respond(_ head: HTTPResponse, body: ByteBuffer? = nil, trailers: HTTPFields? = nil) async throws {
        let streamID = self.streamID
        try await self.connection.perform { $0.respond(streamID: streamID, head: head, body: body, trailers: trailers) }
    }

    /// Sends the response head; the body follows with `write` and `finish`. Compression applies
    /// when the head carries a `content-length` of at least `compression.minimumSize`.
    public func writeHead(_ head: HTTPResponse) async throws {
        let streamID = self.streamID
        try await self.connection.perform { try $0.writeHead(streamID: streamID, head: head) }
    }

    /// Sends one body chunk (a 200 head first, if none was sent).
    public func write(_ chunk: ByteBuffer) async throws {
        try await self.connection.write(streamID: self.streamID, chunk: chunk)
    }

    /// Ends the body, with trailers if given.
    public func finish(trailers: HTTPFields? = nil) async throws {
        try await self.connection.finish(streamID: self.streamID, trailers: trailers)
    }

    /// Resets the stream (RST_STREAM with `code`): the client sees the response fail.
    public func reset(code: UInt32 = HTTP2ErrorCode.cancel) {
        let streamID = self.streamID
        self.connection.performLater { $0.cancelStream(streamID, error: .streamReset(code: code), code: code) }
    }

    func finishIfNeeded() async throws {
        let streamID = self.streamID
        try await self.connection.perform { $0.finishIfNeeded(streamID: streamID) }
    }

    func abort(_ error: any Error) {
        let streamID = self.streamID
        self.connection.performLater { $0.abort(streamID: streamID, error: error) }
    }
}

/// An HTTP/2 server (cleartext, prior knowledge: RFC 9113 §3.3) on SwiftNIO and libnghttp2.
/// Each request runs its handler in its own task; many streams share a connection.
public final class HTTP2Server: ListeningServer, @unchecked Sendable {
    public typealias Handler = @Sendable (HTTPServerRequest, HTTP2ResponseWriter) async throws -> Void

    /// Binds and starts serving. Port 0 picks a free port (read it back from `port`).
    public static func bind(
        host: String,
        port: Int,
        configuration: HTTP2Configuration = .init(),
        listener: ListenerConfiguration = .init(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "serve.wire.server"),
        handler: @escaping Handler
    ) async throws -> HTTP2Server {
        let channels = try await ServerChannels.bind(
            host: host, port: port, eventLoopGroup: eventLoopGroup, listener: listener, autoRead: true
        ) { channel in
            try channel.pipeline.syncOperations.addHandler(
                HTTP2Connection(role: .server(handler), configuration: configuration, logger: logger)
            )
        }
        return HTTP2Server(channels: channels)
    }

}
