import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// One request stream opened by a client: write its body (if it has one) and await its response.
/// Writing and reading can interleave freely (bidirectional streaming).
public struct HTTP2ClientStream: Sendable {
    let connection: NIOLoopBound<HTTP2Connection>
    public let streamID: Int32
    let responseFuture: EventLoopFuture<HTTP2Response>

    /// Sends one request body chunk; returns once the stream's send queue has room.
    public func write(_ chunk: ByteBuffer) async throws {
        try await self.connection.write(streamID: self.streamID, chunk: chunk)
    }

    /// Ends the request body, with trailers if given.
    public func finish(trailers: HTTPFields? = nil) async throws {
        try await self.connection.finish(streamID: self.streamID, trailers: trailers)
    }

    /// The response head, once it arrives; its body streams on.
    public func response() async throws -> HTTP2Response {
        try await self.responseFuture.get()
    }

    /// Abandons the request: RST_STREAM(CANCEL), and everything waiting on it fails.
    public func cancel() {
        self.cancel(error: .streamReset(code: HTTP2ErrorCode.cancel))
    }

    /// Abandons the request, failing whoever waits on it with `error`.
    public func cancel(error: HTTP2Error) {
        let streamID = self.streamID
        self.connection.performLater { $0.cancelStream(streamID, error: error) }
    }
}

/// A client connection to one HTTP/2 server (cleartext, prior knowledge). It multiplexes any
/// number of concurrent requests; past the server's SETTINGS_MAX_CONCURRENT_STREAMS they wait in
/// nghttp2 for a free slot.
public final class HTTP2ClientConnection: Sendable {
    /// The connection's channel, for tools that need the socket itself: the control-plane
    /// simulator (benchmarks/control-plane) counts its bytes with a handler of its own, pauses
    /// reading to play a partitioned node, and resets it (SO_LINGER 0) to play a crashed one.
    public let channel: any Channel
    let connection: NIOLoopBound<HTTP2Connection>
    private let availability: NIOLockedValueBox<Bool>

    private init(channel: any Channel, connection: NIOLoopBound<HTTP2Connection>, availability: NIOLockedValueBox<Bool>) {
        self.channel = channel
        self.connection = connection
        self.availability = availability
    }

    public static func connect(
        host: String,
        port: Int,
        configuration: HTTP2Configuration = .init(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        connectTimeout: TimeAmount = .seconds(10),
        logger: Logger = Logger(label: "serve.wire.client")
    ) async throws -> HTTP2ClientConnection {
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: eventLoopGroup)
                .connectTimeout(connectTimeout)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            HTTP2Connection(role: .client, configuration: configuration, logger: logger)
                        )
                    }
                }
                .connect(host: host, port: port)
                .get()
        } catch {
            throw HTTP2Error.connectFailed("\(host):\(port): \(error)")
        }
        let (handler, availability) = try await channel.eventLoop.submit {
            let handler = try channel.pipeline.syncOperations.handler(type: HTTP2Connection.self)
            return (NIOLoopBound(handler, eventLoop: channel.eventLoop), handler.availability)
        }.get()
        return HTTP2ClientConnection(channel: channel, connection: handler, availability: availability)
    }

    /// This side's address of the connection (what a peer would see as our address).
    public var localAddress: SocketAddress? { self.channel.localAddress }

    /// Whether new requests may start (false after GOAWAY, an error or a close).
    public var isAvailable: Bool {
        self.channel.isActive && self.availability.withLockedValue { $0 }
    }

    /// Completes when the connection has closed.
    public var closeFuture: EventLoopFuture<Void> { self.channel.closeFuture }

    /// Opens a stream. With `endStream` the request has no body; otherwise write it with the
    /// stream's `write` and `finish`. `timeout` bounds the wait for the response head.
    public func openStream(
        _ head: HTTPRequest,
        endStream: Bool = false,
        timeout: TimeAmount? = nil
    ) async throws -> HTTP2ClientStream {
        try await self.open(head, body: nil, endStream: endStream, timeout: timeout)
    }

    /// Opens a stream whose whole body is `body` (compressed when `compressRequests` is set and
    /// it is large enough); await its response with the stream's `response()`.
    public func openStream(_ head: HTTPRequest, body: ByteBuffer, timeout: TimeAmount? = nil) async throws -> HTTP2ClientStream {
        try await self.open(head, body: body, endStream: false, timeout: timeout)
    }

    /// Sends a request with its whole body (or none) and returns the response, whose body
    /// streams on. `timeout` bounds the wait for the response head.
    public func send(_ head: HTTPRequest, body: ByteBuffer? = nil, timeout: TimeAmount? = nil) async throws -> HTTP2Response {
        let stream = try await self.open(head, body: body, endStream: body == nil, timeout: timeout)
        return try await stream.response()
    }

    private func open(_ head: HTTPRequest, body: ByteBuffer?, endStream: Bool, timeout: TimeAmount?) async throws -> HTTP2ClientStream {
        let (streamID, response) = try await self.connection.perform {
            try $0.openClientStream(head: head, body: body, endStream: endStream, timeout: timeout)
        }
        return HTTP2ClientStream(connection: self.connection, streamID: streamID, responseFuture: response)
    }

    /// Sends GOAWAY, lets open streams finish, then closes.
    public func close() async {
        self.connection.performLater { $0.closeGracefully() }
        try? await self.channel.closeFuture.get()
    }

    /// Closes the socket at once; open streams fail with `HTTP2Error.connectionClosed`.
    public func closeNow() async {
        try? await self.channel.close()
    }
}
