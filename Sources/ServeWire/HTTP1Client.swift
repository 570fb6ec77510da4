import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// A response received by an HTTP/1.1 client: its head and its body, streamed.
///
/// The head carries every field as the server sent it, hop-by-hop ones (`connection`,
/// `transfer-encoding`, `keep-alive`) included: a proxy passing it on must drop those
/// (RFC 9110 §7.6.1). The body is already de-chunked.
public struct HTTPClientResponse: Sendable {
    public var head: HTTPResponse
    public var body: HTTPBody

    public init(head: HTTPResponse, body: HTTPBody) {
        self.head = head
        self.body = body
    }
}

/// HTTP/1.1 connections to one server (meant for local child processes on 127.0.0.1: Flask,
/// FastAPI), reused while the server keeps them alive (RFC 9112 §9.3).
///
/// HTTP/1.1 carries one request at a time per connection, so concurrent requests each take a
/// connection of their own: an idle one when there is one, else a new one. At most
/// `maxIdleConnections` are kept open between requests. Response bodies stream with
/// backpressure: the socket is read only while less than 256 KiB of the body waits for the
/// caller, so a slow reader holds the server back through TCP.
///
/// Read each response body to its end (or until it fails): its connection is reused only then.
public final class HTTP1ConnectionPool: Sendable {
    public let host: String
    public let port: Int
    public let maxIdleConnections: Int
    let eventLoopGroup: any EventLoopGroup
    private let state = NIOLockedValueBox(PoolState())

    struct PoolState {
        /// Connections waiting for a request, most recently used last.
        var idle: [HTTP1PooledConnection] = []
        /// Every open connection, so `close` can end them all.
        var open: [ObjectIdentifier: any Channel] = [:]
        var closed = false
        /// Connections opened over the pool's life (for tests and metrics).
        var opened = 0
    }

    public init(
        host: String,
        port: Int,
        maxIdleConnections: Int = 16,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.host = host
        self.port = port
        self.maxIdleConnections = maxIdleConnections
        self.eventLoopGroup = eventLoopGroup
    }

    deinit {
        let channels = self.state.withLockedValue { Array($0.open.values) }
        for channel in channels { channel.close(promise: nil) }
    }

    /// Connections opened since the pool was made.
    public var connectionsOpened: Int { self.state.withLockedValue { $0.opened } }

    /// Sends a request whose whole body (if any) is `body`, sent with its `content-length`, and
    /// returns the response, whose body streams on. Keep-alive connections are reused.
    ///
    /// Errors: `HTTP2Error.connectFailed` when the port does not accept,
    /// `HTTP2Error.connectionClosed` when the peer closes before the response has ended,
    /// `HTTP2Error.timeout` when the response head has not arrived within `timeout`.
    public func send(
        _ head: HTTPRequest,
        body: ByteBuffer? = nil,
        timeout: TimeAmount? = nil
    ) async throws -> HTTPClientResponse {
        try await self.send(head, payload: .whole(body), timeout: timeout)
    }

    /// Sends a request whose body is streamed from `body` (with the chunked coding unless the
    /// head has a `content-length`, which the body must then match); the upload goes on while
    /// the response streams back, and waits while the socket is full. Errors as above; an
    /// error thrown by `body` fails the response and closes the connection.
    public func send<Body: AsyncSequence & Sendable>(
        _ head: HTTPRequest,
        body: Body,
        timeout: TimeAmount? = nil
    ) async throws -> HTTPClientResponse where Body.Element == ByteBuffer {
        let upload: HTTP1Upload = { writer in
            for try await chunk in body { try await writer.write(chunk) }
        }
        return try await self.send(head, payload: .stream(upload), timeout: timeout)
    }

    /// Closes every connection; requests in progress fail with `HTTP2Error.connectionClosed`,
    /// and later ones with `HTTP2Error.connectFailed`.
    public func close() async {
        let channels = self.state.withLockedValue { state in
            state.closed = true
            state.idle.removeAll()
            return Array(state.open.values)
        }
        for channel in channels { try? await channel.close() }
    }

    // MARK: internals

    private func send(_ head: HTTPRequest, payload: HTTP1Payload, timeout: TimeAmount?) async throws -> HTTPClientResponse {
        let deadline = timeout.map { NIODeadline.now() + $0 }
        let requestHead = self.requestHead(head, payload: payload)
        var retried = false
        while true {
            let (connection, reused) = try await self.checkout(deadline: deadline)
            do {
                return try await connection.execute(requestHead, payload: payload, deadline: deadline, pool: self)
            } catch HTTP1ClientConnection.Failure.closedBeforeResponse {
                // Most likely a reused connection the server closed while it sat idle (its
                // keep-alive timer and this request crossed). Nothing proves the request was not
                // applied, so only an idempotent one is sent again, once, on a fresh connection
                // (RFC 9112 §9.3.1); a streamed body cannot be sent twice.
                guard reused, !retried, case .whole = payload, head.method.isIdempotent else {
                    throw HTTP2Error.connectionClosed
                }
                retried = true
            }
        }
    }

    /// The HTTP/1 head for a request: `host` from the authority, and framing for the body
    /// (RFC 9112 §6.1-6.3).
    private func requestHead(_ head: HTTPRequest, payload: HTTP1Payload) -> HTTPRequestHead {
        var headers = HTTPHeaders(converting: head.headerFields)
        if !headers.contains(name: "host") {
            headers.add(name: "host", value: head.authority ?? "\(self.host):\(self.port)")
        }
        switch payload {
        case .whole(let body):
            headers.remove(name: "transfer-encoding")
            if let body {
                headers.replaceOrAdd(name: "content-length", value: String(body.readableBytes))
            } else if !headers.contains(name: "content-length"), !Self.bodylessMethods.contains(head.method) {
                // An empty body said outright: some servers wait for a body on POST otherwise.
                headers.add(name: "content-length", value: "0")
            }
        case .stream:
            if headers.contentLength == nil {
                headers.remove(name: "content-length")
                headers.replaceOrAdd(name: "transfer-encoding", value: "chunked")
            } else {
                headers.remove(name: "transfer-encoding")
            }
        }
        return HTTPRequestHead(
            version: .http1_1,
            method: HTTPMethod(rawValue: head.method.rawValue),
            uri: head.path ?? "/",
            headers: headers
        )
    }

    private static let bodylessMethods: Set<HTTPRequest.Method> = [.get, .head, .delete, .options, .trace, .connect]

    /// An idle connection, or a new one.
    private func checkout(deadline: NIODeadline?) async throws -> (HTTP1PooledConnection, reused: Bool) {
        let idle: HTTP1PooledConnection? = try self.state.withLockedValue { state in
            guard !state.closed else { throw HTTP2Error.connectFailed("\(self.host):\(self.port): the pool is closed") }
            while let connection = state.idle.popLast() {
                if connection.channel.isActive { return connection }
            }
            return nil
        }
        if let idle { return (idle, true) }
        return (try await self.connect(deadline: deadline), false)
    }

    private func connect(deadline: NIODeadline?) async throws -> HTTP1PooledConnection {
        var connectTimeout = TimeAmount.seconds(10)
        if let deadline {
            connectTimeout = min(connectTimeout, max(deadline - .now(), .milliseconds(1)))
        }
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: self.eventLoopGroup)
                .connectTimeout(connectTimeout)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelOption(.autoRead, value: false)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let pipeline = channel.pipeline.syncOperations
                        // Field values as the bytes they are, both ways (`HTTP1Codec.swift`).
                        let methods = HTTP1MethodQueue()
                        try pipeline.addHandler(HTTP1RequestEncoder(methods: methods))
                        try pipeline.addHandler(ByteToMessageHandler(HTTP1Decoder.responses(methods: methods)))
                        try pipeline.addHandler(HTTP1ClientConnection())
                    }
                }
                .connect(host: self.host, port: self.port)
                .get()
        } catch {
            if let deadline, NIODeadline.now() >= deadline { throw HTTP2Error.timeout }
            throw HTTP2Error.connectFailed("\(self.host):\(self.port): \(error)")
        }
        let handler = try await channel.eventLoop.submit {
            NIOLoopBound(
                try channel.pipeline.syncOperations.handler(type: HTTP1ClientConnection.self), eventLoop: channel.eventLoop)
        }.get()
        let connection = HTTP1PooledConnection(channel: channel, handler: handler)
        let key = ObjectIdentifier(channel)
        let closed = self.state.withLockedValue { state in
            state.opened += 1
            if !state.closed { state.open[key] = channel }
            return state.closed
        }
        if closed {
            try? await channel.close()
            throw HTTP2Error.connectFailed("\(self.host):\(self.port): the pool is closed")
        }
        channel.closeFuture.whenComplete { [state = self.state] _ in
            state.withLockedValue { state in
                state.open.removeValue(forKey: key)
                state.idle.removeAll { $0.channel === channel }
            }
        }
        return connection
    }

    /// A connection whose exchange ended cleanly and that the server keeps alive: kept for the
    /// next request, or closed when enough are idle already.
    func release(_ connection: HTTP1PooledConnection) {
        let keep = self.state.withLockedValue { state in
            guard !state.closed, connection.channel.isActive, state.idle.count < self.maxIdleConnections else { return false }
            state.idle.append(connection)
            return true
        }
        if !keep { connection.channel.close(promise: nil) }
    }
}

/// What a request sends: a whole body (or none), or a stream of chunks.
enum HTTP1Payload: Sendable {
    case whole(ByteBuffer?)
    case stream(HTTP1Upload)
}

typealias HTTP1Upload = @Sendable (HTTP1UploadWriter) async throws -> Void

/// Writes a streamed request body onto its connection.
struct HTTP1UploadWriter: Sendable {
    let connection: NIOLoopBound<HTTP1ClientConnection>
    let exchangeID: UInt64

    func write(_ chunk: ByteBuffer) async throws {
        let id = self.exchangeID
        try await self.connection.performWrite { try $0.writeBody(id, chunk: chunk) }
    }
}

/// One pooled connection: the channel and its handler.
final class HTTP1PooledConnection: Sendable {
    let channel: any Channel
    let handler: NIOLoopBound<HTTP1ClientConnection>
    /// Upload tasks run beside the connection, on its event loop.
    let executor: EventLoopTaskExecutor

    init(channel: any Channel, handler: NIOLoopBound<HTTP1ClientConnection>) {
        self.channel = channel
        self.handler = handler
        self.executor = EventLoopTaskExecutor(channel.eventLoop)
    }

    /// Sends the request and waits for the response head; a streamed body goes on uploading in
    /// its own task. Cancelling the caller abandons the request and closes the connection.
    func execute(
        _ head: HTTPRequestHead,
        payload: HTTP1Payload,
        deadline: NIODeadline?,
        pool: HTTP1ConnectionPool
    ) async throws -> HTTPClientResponse {
        let handler = self.handler
        let (id, response) = try await handler.perform { connection in
            try connection.start(head, payload: payload, deadline: deadline) { [self] in pool.release(self) }
        }
        if case .stream(let upload) = payload {
            let writer = HTTP1UploadWriter(connection: handler, exchangeID: id)
            Task(executorPreference: self.executor) {
                do {
                    try await upload(writer)
                    try await handler.perform { try $0.endBody(id) }
                } catch {
                    handler.performLater { $0.uploadFailed(id, error: error) }
                }
            }
        }
        return try await withTaskCancellationHandler {
            try await response.get()
        } onCancel: {
            handler.performLater { $0.fail(id, error: CancellationError()) }
        }
    }
}

/// The client side of one HTTP/1.1 connection: one request at a time, its response body
/// streamed through an `InboundBodySource` with reads paced by the caller (`autoRead` is off).
/// Everything here runs on the channel's event loop.
final class HTTP1ClientConnection: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    /// Reading stops while this many response body bytes wait for the caller.
    static let bodyBufferHighWatermark = 256 << 10

    enum Failure: Error {
        /// The connection closed before any byte of the response: the request may never have
        /// reached the server.
        case closedBeforeResponse
    }

    final class Exchange {
        let id: UInt64
        var responsePromise: EventLoopPromise<HTTPClientResponse>?
        /// Held by the caller's `HTTPBody` alone: a caller that lets it go before its end is seen
        /// (`bodyAbandoned`).
        weak var source: InboundBodySource?
        var unread = 0
        var receivedAny = false
        /// Between a 1xx head and its end: not the response yet (RFC 9110 §15.2).
        var informational = false
        var requestEnded = false
        var responseEnded = false
        /// Both sides keep the connection open afterwards (RFC 9112 §9.3).
        var keepAlive: Bool
        /// A streamed body's announced length, and how much of it was sent.
        var declaredLength: Int?
        var sent = 0
        var timeout: Scheduled<Void>?
        let release: @Sendable () -> Void

        init(id: UInt64, keepAlive: Bool, release: @escaping @Sendable () -> Void) {
            self.id = id
            self.keepAlive = keepAlive
            self.release = release
        }
    }

    private var context: ChannelHandlerContext?
    private var exchange: Exchange?
    private var nextExchangeID: UInt64 = 0
    private var writeWaiters = WriteWaiters()
    private var readPaused = false
    private var closed = false

    // MARK: channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { context.read() }
    }

    func channelActive(context: ChannelHandlerContext) {
        // Reading while idle too: a server that closes an idle connection is noticed at once.
        context.read()
        context.fireChannelActive()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.readIfAppropriate()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.writeWaiters.removeAll().succeed() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.connectionClosed()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.connectionClosed()
        self.context = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A body cut short by EOF (NIO's parser reports it here) is the peer closing
        // mid-response; any other parser error is a malformed response. Socket errors close the
        // connection, and `channelInactive` tells the exchange.
        if let exchange = self.exchange, let parserError = error as? HTTPParserError {
            if parserError == .invalidEOFState {
                // Cut short: the bytes that came before the close are still read, then the cut.
                self.fail(exchange.id, error: HTTP2Error.connectionClosed, keepingReceived: true)
            } else {
                self.fail(exchange.id, error: HTTP2Error.protocolError("malformed HTTP/1.1 response: \(parserError)"))
            }
        }
        context.close(promise: nil)
    }

    private func connectionClosed() {
        self.closed = true
        if let exchange = self.exchange {
            self.exchange = nil
            let error: any Error = exchange.receivedAny ? HTTP2Error.connectionClosed : Failure.closedBeforeResponse
            exchange.timeout?.cancel()
            exchange.responsePromise?.fail(error)
            exchange.responsePromise = nil
            exchange.source?.fail(HTTP2Error.connectionClosed)
        }
        self.writeWaiters.removeAll().fail(HTTP2Error.connectionClosed)
    }

    private func readIfAppropriate() {
        guard let context, !self.closed else { return }
        if let exchange = self.exchange, exchange.source != nil, !exchange.responseEnded,
            exchange.unread >= Self.bodyBufferHighWatermark
        {
            self.readPaused = true
            return
        }
        self.readPaused = false
        context.read()
    }

    // MARK: the request

    /// Starts an exchange: writes the head (and a whole body). Returns its id and the future of
    /// the response head.
    func start(
        _ head: HTTPRequestHead,
        payload: HTTP1Payload,
        deadline: NIODeadline?,
        release: @escaping @Sendable () -> Void
    ) throws -> (UInt64, EventLoopFuture<HTTPClientResponse>) {
        guard let context, !self.closed, context.channel.isActive else { throw Failure.closedBeforeResponse }
        guard self.exchange == nil else { throw HTTP2Error.protocolError("an HTTP/1.1 connection carries one request at a time") }
        self.nextExchangeID &+= 1
        let exchange = Exchange(id: self.nextExchangeID, keepAlive: head.isKeepAlive, release: release)
        let promise = context.eventLoop.makePromise(of: HTTPClientResponse.self)
        exchange.responsePromise = promise
        self.exchange = exchange
        if let deadline {
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            let id = exchange.id
            exchange.timeout = context.eventLoop.scheduleTask(deadline: deadline) {
                loopBound.value.timedOut(id)
            }
        }
        context.write(self.wrapOutboundOut(.head(head)), promise: nil)
        switch payload {
        case .whole(let body):
            if let body, body.readableBytes > 0 {
                context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            }
            context.write(self.wrapOutboundOut(.end(nil)), promise: nil)
            exchange.requestEnded = true
        case .stream:
            exchange.declaredLength = head.headers.contentLength
        }
        context.flush()
        return (exchange.id, promise.futureResult)
    }

    private func current(_ id: UInt64) throws -> (ChannelHandlerContext, Exchange) {
        guard let context, !self.closed else { throw HTTP2Error.connectionClosed }
        guard let exchange = self.exchange, exchange.id == id, !exchange.requestEnded else { throw HTTP2Error.streamClosed }
        return (context, exchange)
    }

    /// Queues a chunk of a streamed body; returns a future while the socket is full.
    func writeBody(_ id: UInt64, chunk: ByteBuffer) throws -> EventLoopFuture<Void>? {
        let (context, exchange) = try self.current(id)
        guard chunk.readableBytes > 0 else { return nil }
        exchange.sent += chunk.readableBytes
        if let declared = exchange.declaredLength, exchange.sent > declared {
            throw HTTP2Error.protocolError("the request body is longer than the \(declared) bytes its content-length announced")
        }
        context.writeAndFlush(self.wrapOutboundOut(.body(.byteBuffer(chunk))), promise: nil)
        guard !context.channel.isWritable else { return nil }
        return self.writeWaiters.wait(on: context.eventLoop)
    }

    /// Ends a streamed body.
    func endBody(_ id: UInt64) throws {
        let (context, exchange) = try self.current(id)
        if let declared = exchange.declaredLength, exchange.sent != declared {
            throw HTTP2Error.protocolError(
                "the request body ended after \(exchange.sent) of the \(declared) bytes its content-length announced")
        }
        exchange.requestEnded = true
        context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
        self.completeIfDone(exchange)
    }

    /// The body sequence threw, or writing it failed: the request cannot be completed, so the
    /// exchange fails with that error and the connection closes.
    func uploadFailed(_ id: UInt64, error: any Error) {
        guard let exchange = self.exchange, exchange.id == id else { return }
        // The response already ended (the server answered without reading it all): nothing is
        // waiting; the connection just cannot be reused.
        if exchange.responseEnded {
            self.exchange = nil
            self.context?.close(promise: nil)
            return
        }
        self.fail(id, error: error)
    }

    private func timedOut(_ id: UInt64) {
        guard let exchange = self.exchange, exchange.id == id, exchange.responsePromise != nil else { return }
        self.fail(id, error: HTTP2Error.timeout)
    }

    /// Abandons the exchange: whoever waits on it gets `error`, and the connection closes (the
    /// rest of its response would otherwise be taken for the next one's).
    /// With `keepingReceived`, the body's reader gets what arrived before the failure first.
    func fail(_ id: UInt64, error: any Error, keepingReceived: Bool = false) {
        guard let exchange = self.exchange, exchange.id == id else { return }
        self.exchange = nil
        exchange.timeout?.cancel()
        exchange.responsePromise?.fail(error)
        exchange.responsePromise = nil
        if keepingReceived {
            exchange.source?.cutShort(error)
        } else {
            exchange.source?.fail(error)
        }
        self.context?.close(promise: nil)
    }

    // MARK: the response

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let exchange = self.exchange else {
            // Bytes nobody asked for: the connection is out of step.
            context.close(promise: nil)
            return
        }
        exchange.receivedAny = true
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            if (100..<200).contains(head.status.code) && head.status.code != 101 {
                exchange.informational = true
                return
            }
            self.responseHeadReceived(head, exchange: exchange, context: context)
        case .body(let chunk):
            guard let source = exchange.source else { return }
            exchange.unread += chunk.readableBytes
            source.append(chunk)
        case .end(let trailers):
            if exchange.informational {
                exchange.informational = false
                return
            }
            exchange.responseEnded = true
            // Back to the pool first: a caller woken by the body's end may send its next request
            // at once, and should find this connection idle.
            self.completeIfDone(exchange)
            exchange.source?.finish(trailers: trailers.map { HTTPFields(converting: $0) })
        }
    }

    private func responseHeadReceived(_ head: HTTPResponseHead, exchange: Exchange, context: ChannelHandlerContext) {
        guard let promise = exchange.responsePromise, (0...999).contains(head.status.code) else {
            self.fail(exchange.id, error: HTTP2Error.protocolError("unexpected response head"))
            return
        }
        exchange.responsePromise = nil
        exchange.timeout?.cancel()
        exchange.timeout = nil
        exchange.keepAlive = exchange.keepAlive && head.isKeepAlive
        if head.status.code == 204, (head.headers.contentLength ?? 0) > 0 || head.headers.contains(name: "transfer-encoding") {
            // A 204 has no body (RFC 9110 §15.3.5), yet this one announced one: a server that
            // confused may send those bytes anyway, and they would be read as the next
            // response. The connection is not reused.
            exchange.keepAlive = false
        }
        let id = exchange.id
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let source = InboundBodySource(
            onConsume: { count in loopBound.performLater { $0.bodyConsumed(id, count: count) } },
            onRelease: { loopBound.performLater { $0.bodyAbandoned(id) } })
        exchange.source = source
        let response = HTTPResponse(
            status: HTTPResponse.Status(code: Int(head.status.code), reasonPhrase: head.status.reasonPhrase),
            headerFields: HTTPFields(converting: head.headers)
        )
        promise.succeed(HTTPClientResponse(head: response, body: HTTPBody(source: source)))
    }

    /// The caller let the response body go before its end (it was cancelled: its client went
    /// away): the connection closes, so the server sees the request abandoned (a process
    /// replica's next write fails) instead of streaming on to nobody.
    private func bodyAbandoned(_ id: UInt64) {
        guard let exchange = self.exchange, exchange.id == id, !exchange.responseEnded else { return }
        self.context?.close(promise: nil)
    }

    private func bodyConsumed(_ id: UInt64, count: Int) {
        guard let exchange = self.exchange, exchange.id == id else { return }
        exchange.unread = max(0, exchange.unread - count)
        if self.readPaused && exchange.unread < Self.bodyBufferHighWatermark { self.readIfAppropriate() }
    }

    /// Once both the request and the response have ended, the connection goes back to the pool
    /// (if both sides keep it alive) or closes.
    private func completeIfDone(_ exchange: Exchange) {
        guard exchange.responseEnded, self.exchange === exchange else { return }
        self.exchange = nil
        // A server that answered before taking the whole body (RFC 9110 §15.5.14 allows it)
        // leaves the connection out of step: it closes, and the upload stops.
        if exchange.keepAlive && exchange.requestEnded && !self.closed {
            exchange.release()
        } else {
            self.context?.close(promise: nil)
        }
    }
}

extension HTTPRequest.Method {
    /// RFC 9110 §9.2.2: repeating the request has the same effect as sending it once.
    var isIdempotent: Bool {
        [.get, .head, .options, .trace, .put, .delete].contains(self)
    }
}
