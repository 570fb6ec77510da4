import HTTPTypes
import Logging
import NIOCore
import NIOHTTP1

/// One HTTP/1.1 server connection: the handler behind NIO's HTTP/1 codec. It turns each request
/// into an `HTTPServerRequest` whose body streams through an `InboundBodySource`, runs the
/// handler on the connection's event loop, and frames the response.
///
/// NIO's `HTTPServerPipelineHandler` (in front of this one) holds pipelined requests back until
/// the response before them has ended, so at most one request is in progress here at a time
/// (RFC 9112 §9.3.2: responses go out in request order).
///
/// Reading is explicit (`autoRead` is off): the socket is read only while the request in
/// progress has fewer than `bodyBufferHighWatermark` body bytes waiting for its handler, and
/// reading resumes as the handler consumes them. HTTP/1.1 has no flow control, so TCP's receive
/// window is what holds a fast client back.
///
/// Everything here runs on the channel's event loop.
final class HTTP1ServerConnection: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// A body its handler left unread is read and dropped, so the connection can carry the next
    /// request, when at most this much of it is left; past that, closing is cheaper (a server
    /// may close a connection after any response, RFC 9112 §9.6).
    static let maxDrainBytes = 1 << 20
    /// After a response that leaves request bytes unread, the connection stops sending (a FIN)
    /// but keeps reading for this long before it closes: closing with unread bytes would send a
    /// TCP reset that can destroy the response before the client reads it (RFC 9112 §9.6).
    static let lingerTime: TimeAmount = .seconds(2)

    /// The request in progress: its head arrived, and its body or its response has not ended.
    final class Exchange {
        let id: UInt64
        let isHead: Bool
        /// HTTP/1.0 clients get HTTP/1.0 responses: no chunked coding (RFC 9112 §7.1), and a
        /// body without `content-length` ends with the connection.
        let version: HTTPVersion
        /// The client asked to keep the connection (RFC 9112 §9.3).
        let clientKeepAlive: Bool
        /// The request body's `content-length`, when it has one.
        let declaredLength: Int?
        let source: InboundBodySource
        var requestComplete = false
        /// Body bytes received so far.
        var received = 0
        /// Body bytes handed to the source and not yet consumed by the handler.
        var unread = 0
        /// The handler is done with the body; the rest is read and dropped.
        var draining = false
        var dropped = 0
        var handlerDone = false
        var continueState: ContinueState
        var response: ResponseState = .none
        /// The response said (or must say) `Connection: close`.
        var closeAfterResponse = false
        /// The handler's task: cancelled when the connection closes before it is done (the
        /// client went away, so nobody waits for its work).
        var task: Task<Void, Never>?

        enum ContinueState {
            case notExpected
            /// The client sent `Expect: 100-continue` and waits for `100 Continue` before its body.
            case pending
            case sent
        }

        enum ResponseState {
            case none
            /// The head went out; `bodyAllowed` is false for HEAD requests and bodiless statuses.
            case streaming(bodyAllowed: Bool, declaredLength: Int?, written: Int)
            case ended
        }

        init(id: UInt64, head: HTTPRequestHead, source: InboundBodySource, expectsContinue: Bool) {
            self.id = id
            self.isHead = head.method == .HEAD
            self.version = head.version
            self.clientKeepAlive = head.isKeepAlive
            self.declaredLength = head.headers.contentLength
            self.source = source
            self.continueState = expectsContinue ? .pending : .notExpected
        }

        /// The client still holds its body back, waiting for a `100 Continue` it never got: it
        /// may never send it, so the connection's framing is unknown (RFC 9110 §10.1.1).
        var expectationUnmet: Bool {
            if case .pending = self.continueState, self.received == 0 { return true }
            return false
        }

        var responseEnded: Bool {
            if case .ended = self.response { return true }
            return false
        }
    }

    private enum Lifecycle {
        case open
        /// Shutting down: the request in progress finishes, then the connection closes.
        case quiescing
        /// The connection closes once its last write has gone out.
        case closing
        case closed
    }

    let configuration: HTTP1Configuration
    let logger: Logger
    private let handler: HTTP1Server.Handler
    private var context: ChannelHandlerContext?
    private var taskExecutor: EventLoopTaskExecutor?
    private var remoteAddress: SocketAddress?
    private var started = false
    private var lifecycle = Lifecycle.open
    private var closeScheduled = false
    private(set) var exchange: Exchange?
    private var nextExchangeID: UInt64 = 0
    private var idleTimer: Scheduled<Void>?
    /// Runs while part of a request head has arrived (`requestHeadTimeout`).
    private var headTimer: Scheduled<Void>?
    /// Runs while a request body is incomplete and being read (`bodyReadTimeout`): rearmed by
    /// every chunk, paused while reading is held back for a slow handler.
    private var bodyTimer: Scheduled<Void>?
    private var lingerTimer: Scheduled<Void>?
    /// The last response end written: once it has gone out, so has everything before it
    /// (writes complete in order), and the connection may close without cutting a response.
    private var lastWrite: EventLoopFuture<Void>?
    private var writeWaiters = WriteWaiters()
    /// A read was withheld because the handler is behind; it resumes as the handler reads.
    private var readPaused = false

    init(configuration: HTTP1Configuration, logger: Logger, handler: @escaping HTTP1Server.Handler) {
        self.configuration = configuration
        self.logger = logger
        self.handler = handler
    }

    /// Adds the HTTP/1 server codec (`HTTP1Codec.swift`: field values kept as the bytes they
    /// are, heads up to `maxHeaderBytes`), NIO's pipelining handler (pipelined requests wait for
    /// the response before them) and error handler (400 for a malformed request), and this
    /// handler to a pipeline.
    static func configure(
        _ pipeline: ChannelPipeline.SynchronousOperations,
        configuration: HTTP1Configuration,
        logger: Logger,
        handler: @escaping HTTP1Server.Handler
    ) throws {
        let methods = HTTP1MethodQueue()
        try pipeline.addHandler(HTTP1ResponseEncoder(methods: methods))
        try pipeline.addHandler(ByteToMessageHandler(HTTP1Decoder.requests(maxHeadBytes: configuration.maxHeaderBytes, methods: methods)))
        try pipeline.addHandler(HTTPServerPipelineHandler())
        try pipeline.addHandler(HTTPServerProtocolErrorHandler())
        try pipeline.addHandler(HTTP1ServerConnection(configuration: configuration, logger: logger, handler: handler))
    }

    private var loopBound: NIOLoopBound<HTTP1ServerConnection>? {
        guard let context else { return nil }
        return NIOLoopBound(self, eventLoop: context.eventLoop)
    }

    // MARK: channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.taskExecutor = EventLoopTaskExecutor(context.eventLoop)
        if context.channel.isActive { self.start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard !self.started else { return }
        self.started = true
        self.remoteAddress = context.channel.remoteAddress
        self.armIdleTimer()
        self.readIfAppropriate()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head): self.requestHeadReceived(head, context: context)
        case .body(let chunk): self.bodyReceived(chunk)
        case .end(let trailers): self.requestEndReceived(trailers)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // Bytes arrived and no request is in progress: they began a head that is not complete.
        if self.exchange == nil && self.headTimer == nil { self.armHeadTimer() }
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
        // A parser error was answered with 400 by NIO's error handler in front of this one; the
        // request in progress, if any, can no longer be framed.
        self.logger.debug(
            "closing HTTP/1 connection after an error",
            metadata: ["serve.peer": "\(self.remoteAddress.map { "\($0)" } ?? "?")", "error": "\(error)"]
        )
        if let exchange = self.exchange, !exchange.requestComplete {
            exchange.source.fail(
                error is HTTPParserError
                    ? HTTP2Error.badBody("malformed HTTP/1.1 request body: \(error)") : HTTP2Error.connectionClosed)
        }
        self.closeAfterWrites(linger: false)
    }

    private func connectionClosed() {
        self.lifecycle = .closed
        self.idleTimer?.cancel()
        self.idleTimer = nil
        self.headTimer?.cancel()
        self.headTimer = nil
        self.bodyTimer?.cancel()
        self.bodyTimer = nil
        self.lingerTimer?.cancel()
        self.lingerTimer = nil
        if let exchange = self.exchange {
            self.exchange = nil
            exchange.source.fail(HTTP2Error.connectionClosed)
            if !exchange.handlerDone { exchange.task?.cancel() }
        }
        self.writeWaiters.removeAll().fail(HTTP2Error.connectionClosed)
    }

    // MARK: reading

    /// Asks for more bytes unless the request in progress has enough waiting for its handler.
    private func readIfAppropriate() {
        guard let context, self.lifecycle != .closed, context.channel.isActive else { return }
        if let exchange = self.exchange, !exchange.requestComplete, !exchange.draining,
            exchange.unread >= self.configuration.bodyBufferHighWatermark
        {
            self.readPaused = true
            // The client is not stalling: this side stopped reading.
            self.bodyTimer?.cancel()
            self.bodyTimer = nil
            return
        }
        self.readPaused = false
        if let exchange = self.exchange, !exchange.requestComplete, self.bodyTimer == nil { self.armBodyTimer(exchange.id) }
        context.read()
    }

    private func requestHeadReceived(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        // While shutting down or closing, a pipelined request is left unanswered: the connection
        // closes after the response before it (RFC 9112 §9.6), and the client retries elsewhere.
        guard self.lifecycle == .open, self.exchange == nil else { return }
        let hasBody = head.headers.isChunked || (head.headers.contentLength ?? 0) > 0
        let exchange = self.beginExchange(head, hasBody: hasBody, context: context)
        guard let method = HTTPRequest.Method(head.method.rawValue) else {
            self.refuse(exchange, status: .badRequest, message: "malformed request method\n")
            return
        }
        if let problem = self.framingProblem(head) {
            self.refuse(exchange, status: problem.status, message: problem.message)
            return
        }
        guard let request = self.serverRequest(head, method: method, hasBody: hasBody, exchange: exchange) else { return }
        self.startHandler(request, exchange: exchange, context: context)
    }

    /// The exchange of a new request: the connection's timers stop, and a body is read into the
    /// exchange's source (with the body timer running) as its handler consumes it.
    private func beginExchange(_ head: HTTPRequestHead, hasBody: Bool, context: ChannelHandlerContext) -> Exchange {
        self.idleTimer?.cancel()
        self.idleTimer = nil
        self.headTimer?.cancel()
        self.headTimer = nil
        self.nextExchangeID &+= 1
        let id = self.nextExchangeID
        let source: InboundBodySource
        if hasBody {
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            source = InboundBodySource { count in
                loopBound.performLater { $0.bodyConsumed(id, count: count) }
            }
        } else {
            source = .ended
        }
        // RFC 9110 §10.1.1: an expectation in an HTTP/1.0 request is ignored, and one on a
        // request without content needs no answer.
        let expectsContinue =
            hasBody && head.version.atLeastHTTP11
            && head.headers["expect"].contains { $0.trimmingOWS().lowercased() == "100-continue" }
        let exchange = Exchange(id: id, head: head, source: source, expectsContinue: expectsContinue)
        self.exchange = exchange
        if hasBody { self.armBodyTimer(id) }
        return exchange
    }

    /// Why a request cannot be framed or served at all, with its status: too many header
    /// fields; more than one Host (RFC 9112 §3.2); a transfer coding that does not end in
    /// chunked, an empty one included, which leaves the body's length unknown (RFC 9112 §6.3).
    private func framingProblem(_ head: HTTPRequestHead) -> (status: HTTPResponse.Status, message: String)? {
        if head.headers.count > self.configuration.maxHeaderCount {
            return (.requestHeaderFieldsTooLarge, "more than \(self.configuration.maxHeaderCount) header fields\n")
        }
        if head.headers["host"].count > 1 {
            return (.badRequest, "more than one Host header field\n")
        }
        if !Self.hasUsableTransferCoding(head.headers) {
            return (.badRequest, "a Transfer-Encoding that does not end in chunked\n")
        }
        return nil
    }

    /// Answers a request that is refused before its handler runs, and closes the connection
    /// after the answer (what follows it on the connection cannot be trusted).
    private func refuse(_ exchange: Exchange, status: HTTPResponse.Status, message: String) {
        exchange.handlerDone = true
        exchange.closeAfterResponse = true
        self.respondNow(exchange, status: status, message: message)
    }

    /// The request as handlers see it, whichever protocol carried it; nil when its body's
    /// content coding is unsupported (then it is answered 415 here).
    private func serverRequest(
        _ head: HTTPRequestHead,
        method: HTTPRequest.Method,
        hasBody: Bool,
        exchange: Exchange
    ) -> HTTPServerRequest? {
        var fields = HTTPFields(converting: head.headers)
        // The authority travels as the request's `authority` (HTTP/2's :authority), not as a
        // field, so that a request reads the same whichever protocol carried it.
        fields[values: HTTPField.Name("host")!] = []
        var authority = head.headers["host"].first
        var path = head.uri
        if let absolute = Self.absoluteForm(head.uri) {
            // RFC 9112 §3.2.2: a server accepts the absolute form, and its authority wins over Host.
            authority = absolute.authority
            path = absolute.path
        }
        // A request body sent with a content coding is decoded as it is read, as the HTTP/2
        // server does: the handler (and anything it forwards to) sees the content itself.
        var decoding: ContentCoding?
        if hasBody, let encoding = fields[.contentEncoding], encoding.trimmingOWS().lowercased() != "identity" {
            guard let coding = ContentCoding(contentEncodingHeader: encoding) else {
                exchange.handlerDone = true
                self.respondNow(
                    exchange, status: .unsupportedMediaType,
                    message: "unsupported content-encoding '\(encoding)'; send gzip, deflate or identity\n")
                return nil
            }
            decoding = coding
            fields[.contentEncoding] = nil
            fields[.contentLength] = nil
        }
        return HTTPServerRequest(
            head: HTTPRequest(
                method: method,
                scheme: "http",
                authority: authority,
                path: path,
                headerFields: fields
            ),
            body: HTTPBody(source: exchange.source, decoding: decoding, decodeLimit: self.configuration.maxDecompressedBodySize),
            remoteAddress: self.remoteAddress,
            hasBody: hasBody
        )
    }

    /// Runs the handler in a task of its own (on this loop's executor), and asks for the body
    /// with 100 Continue if the client waits for that and the handler has not answered first.
    private func startHandler(_ request: HTTPServerRequest, exchange: Exchange, context: ChannelHandlerContext) {
        let id = exchange.id
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let writer = HTTP1ResponseWriter(connection: loopBound, exchangeID: id)
        let handler = self.handler
        let logger = self.logger
        exchange.task = Task(executorPreference: self.taskExecutor) {
            do {
                try await handler(request, writer)
                loopBound.performLater { $0.handlerReturned(id) }
            } catch {
                logger.debug("HTTP/1 request handler failed", metadata: ["error": "\(error)"])
                loopBound.performLater { $0.handlerFailed(id, error: error) }
            }
        }
        if case .pending = exchange.continueState {
            // The handler's task runs first on this loop, until it first waits: for a handler
            // that wants the body, that is its first read. If by then it has not answered, the
            // client is told to send the body (RFC 9110 §10.1.1). A handler that answers at once
            // (a refusal) never makes the client send a body it does not need.
            context.eventLoop.execute { loopBound.value.sendContinueIfWaiting(id) }
        }
    }

    /// No `transfer-encoding`, or one whose last coding is chunked (RFC 9112 §6.3).
    static func hasUsableTransferCoding(_ headers: HTTPHeaders) -> Bool {
        let values = headers["transfer-encoding"]
        guard !values.isEmpty else { return true }
        let codings = values.flatMap { $0.split(separator: ",", omittingEmptySubsequences: false) }
        return codings.last.map { $0.trimmingOWS().lowercased() == "chunked" } ?? false
    }

    /// The authority and path of an absolute-form request target (`http://host:8000/e/x?q`),
    /// or nil for the usual origin form (RFC 9112 §3.2.2).
    static func absoluteForm(_ target: String) -> (authority: String, path: String)? {
        guard !target.hasPrefix("/"), let schemeEnd = target.range(of: "://") else { return nil }
        let scheme = target[..<schemeEnd.lowerBound].lowercased()
        guard scheme == "http" || scheme == "https" else { return nil }
        let rest = target[schemeEnd.upperBound...]
        let pathStart = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
        let authority = String(rest[..<pathStart])
        var path = String(rest[pathStart...])
        if path.isEmpty || path.hasPrefix("?") { path = "/" + path }
        return (authority, path)
    }

    private func sendContinueIfWaiting(_ id: UInt64) {
        guard let exchange = self.exchange, exchange.id == id, self.lifecycle == .open, case .none = exchange.response else {
            return
        }
        self.sendContinueIfPending(exchange)
    }

    private func sendContinueIfPending(_ exchange: Exchange) {
        guard let context, case .pending = exchange.continueState else { return }
        exchange.continueState = .sent
        // The client sent its body anyway (it may stop waiting: RFC 9110 §10.1.1); no need to ask.
        guard exchange.received == 0, !exchange.requestComplete else { return }
        let head = HTTPResponseHead(version: .http1_1, status: .continue)
        context.writeAndFlush(self.wrapOutboundOut(.head(head)), promise: nil)
    }

    private func bodyReceived(_ chunk: ByteBuffer) {
        guard let exchange = self.exchange, !exchange.requestComplete else { return }
        exchange.received += chunk.readableBytes
        if !self.readPaused { self.armBodyTimer(exchange.id) }
        if exchange.draining {
            exchange.dropped += chunk.readableBytes
            if exchange.dropped > Self.maxDrainBytes, !self.closeScheduled {
                self.logger.debug("closing HTTP/1 connection: too much of an unread request body left")
                self.closeAfterWrites(linger: true)
            }
            return
        }
        exchange.unread += chunk.readableBytes
        exchange.source.append(chunk)
    }

    private func requestEndReceived(_ trailers: HTTPHeaders?) {
        guard let exchange = self.exchange, !exchange.requestComplete else { return }
        exchange.requestComplete = true
        self.bodyTimer?.cancel()
        self.bodyTimer = nil
        if !exchange.draining {
            exchange.source.finish(trailers: trailers.map { HTTPFields(converting: $0) })
        }
        self.settle(exchange)
    }

    /// The handler consumed `count` body bytes of request `id`.
    private func bodyConsumed(_ id: UInt64, count: Int) {
        guard let exchange = self.exchange, exchange.id == id, !exchange.draining else { return }
        exchange.unread = max(0, exchange.unread - count)
        if self.readPaused && exchange.unread < self.configuration.bodyBufferHighWatermark {
            self.readIfAppropriate()
        }
    }

    // MARK: the handler's end

    private func handlerReturned(_ id: UInt64) {
        guard let exchange = self.exchange, exchange.id == id else { return }
        exchange.handlerDone = true
        switch exchange.response {
        case .none:
            self.respondNow(exchange, status: .internalServerError, message: "the handler returned without a response\n")
        case .streaming:
            do { try self.finish(id, trailers: nil) } catch {}
        case .ended:
            self.settle(exchange)
        }
    }

    private func handlerFailed(_ id: UInt64, error: any Error) {
        guard let exchange = self.exchange, exchange.id == id else { return }
        exchange.handlerDone = true
        switch exchange.response {
        case .none:
            let answer = ServerAnswer(handlerFailure: error)
            self.respondNow(exchange, status: answer.status, message: answer.message)
        case .streaming:
            // The head is out: the only honest way to say the body is incomplete is to cut the
            // connection before its end (a missing last chunk or short content-length,
            // RFC 9112 §8).
            self.abort()
        case .ended:
            self.settle(exchange)
        }
    }

    /// Answers from the connection itself (a handler that failed or returned without answering).
    private func respondNow(_ exchange: Exchange, status: HTTPResponse.Status, message: String) {
        var fields = HTTPFields()
        fields[.contentType] = "text/plain; charset=utf-8"
        do {
            try self.respond(
                exchange.id, head: HTTPResponse(status: status, headerFields: fields), body: ByteBuffer(string: message))
        } catch {
            self.abort()
        }
    }

    /// Called when the response has ended, the request body has, or the handler has: the
    /// exchange is over once its response and its request body both are; a body the handler
    /// left unread is drained (or the connection closed) once the handler is done with it.
    private func settle(_ exchange: Exchange) {
        guard exchange.responseEnded else { return }
        if exchange.requestComplete {
            if self.exchange === exchange { self.exchange = nil }
            if exchange.closeAfterResponse || self.lifecycle != .open {
                self.closeAfterWrites(linger: false)
            } else if self.exchange == nil {
                self.armIdleTimer()
            }
            return
        }
        // The handler may still be reading the body it answered before reading.
        guard exchange.handlerDone, !exchange.draining else { return }
        exchange.draining = true
        exchange.unread = 0
        exchange.source.fail(HTTP2Error.streamClosed)
        let left = exchange.declaredLength.map { $0 - exchange.received } ?? 0
        if exchange.expectationUnmet || left > Self.maxDrainBytes || exchange.closeAfterResponse
            || self.lifecycle != .open
        {
            self.closeAfterWrites(linger: !exchange.expectationUnmet)
        } else {
            self.readIfAppropriate()
        }
    }

    // MARK: writing (the writer's calls, on the event loop)

    private func writable(_ id: UInt64) throws -> (ChannelHandlerContext, Exchange) {
        guard let context, self.lifecycle != .closed, context.channel.isActive else { throw HTTP2Error.connectionClosed }
        guard let exchange = self.exchange, exchange.id == id, !exchange.responseEnded, !self.closeScheduled else {
            throw HTTP2Error.streamClosed
        }
        return (context, exchange)
    }

    func respond(_ id: UInt64, head: HTTPResponse, body: ByteBuffer?) throws {
        let (context, exchange) = try self.writable(id)
        guard case .none = exchange.response else { throw HTTP2Error.protocolError("the response head was already sent") }
        var head = head
        let body = body ?? ByteBuffer()
        if head.status.allowsBody && (!exchange.isHead || body.readableBytes > 0 || head.headerFields[.contentLength] == nil) {
            // A HEAD response may announce the length a GET would get (RFC 9110 §9.3.2).
            head.headerFields[.contentLength] = String(body.readableBytes)
        }
        // A whole response before the whole request body: the handler has most likely done
        // with it. A client still waiting for 100 Continue may never send it, and a large rest
        // is cheaper to close on than to read (RFC 9110 §10.1.1, RFC 9112 §9.6): say so in the head.
        var unreadRest = false
        if !exchange.requestComplete {
            let left = exchange.declaredLength.map { $0 - exchange.received } ?? 0
            unreadRest = exchange.expectationUnmet || left > Self.maxDrainBytes
        }
        let bodyAllowed = self.writeResponseHead(head, exchange: exchange, context: context, closing: unreadRest)
        if bodyAllowed && body.readableBytes > 0 {
            context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        self.endResponse(exchange, trailers: nil, context: context)
    }

    func writeHead(_ id: UInt64, head: HTTPResponse) throws {
        let (context, exchange) = try self.writable(id)
        guard case .none = exchange.response else { throw HTTP2Error.protocolError("the response head was already sent") }
        // A streamed response started before the body was read: the handler means to read it
        // (an echo, a proxy), so a client waiting for 100 Continue is told to send it first.
        self.sendContinueIfPending(exchange)
        _ = self.writeResponseHead(head, exchange: exchange, context: context)
        context.flush()
    }

    /// Queues a body chunk. Returns nil while the socket has room, else a future that completes
    /// once it has again: that is how a handler feels a slow client.
    func write(_ id: UInt64, chunk: ByteBuffer) throws -> EventLoopFuture<Void>? {
        let (context, exchange) = try self.writable(id)
        if case .none = exchange.response {
            self.sendContinueIfPending(exchange)
            _ = self.writeResponseHead(HTTPResponse(status: .ok), exchange: exchange, context: context)
        }
        guard case .streaming(let bodyAllowed, let declaredLength, let written) = exchange.response else {
            throw HTTP2Error.streamClosed
        }
        if bodyAllowed && chunk.readableBytes > 0 {
            if let declaredLength, written + chunk.readableBytes > declaredLength {
                throw HTTP2Error.protocolError("the body is longer than the \(declaredLength) bytes its content-length announced")
            }
            exchange.response = .streaming(
                bodyAllowed: true, declaredLength: declaredLength, written: written + chunk.readableBytes)
            context.writeAndFlush(self.wrapOutboundOut(.body(.byteBuffer(chunk))), promise: nil)
        }
        guard !context.channel.isWritable else { return nil }
        return self.writeWaiters.wait(on: context.eventLoop)
    }

    func finish(_ id: UInt64, trailers: HTTPFields?) throws {
        let (context, exchange) = try self.writable(id)
        guard case .streaming(let bodyAllowed, let declaredLength, let written) = exchange.response else {
            try self.respond(id, head: HTTPResponse(status: .ok), body: nil)
            return
        }
        if bodyAllowed, let declaredLength, written < declaredLength {
            self.abort()
            throw HTTP2Error.protocolError(
                "the body ended after \(written) of the \(declaredLength) bytes its content-length announced")
        }
        self.endResponse(exchange, trailers: trailers, context: context)
    }

    /// Sends a response head and returns whether a body may follow it. Decides whether the
    /// connection stays open and says so in the head (RFC 9112 §9.6).
    private func writeResponseHead(
        _ head: HTTPResponse,
        exchange: Exchange,
        context: ChannelHandlerContext,
        closing: Bool = false
    ) -> Bool {
        var headers = HTTPHeaders(converting: head.headerFields)
        if head.status.code == 204 || head.status.kind == .informational {
            // RFC 9110 §8.6, RFC 9112 §6.1: no body framing on a 1xx or 204 response.
            headers.remove(name: "content-length")
            headers.remove(name: "transfer-encoding")
        }
        let bodyAllowed = head.status.allowsBody && !exchange.isHead
        let http10 = !exchange.version.atLeastHTTP11
        var close =
            closing || exchange.closeAfterResponse || !exchange.clientKeepAlive || self.lifecycle != .open
            || headers.connectionHas("close")
        if http10 && bodyAllowed && headers.contentLength == nil {
            // No chunked coding for HTTP/1.0: the body ends with the connection (RFC 9112 §6.3).
            close = true
        }
        if close {
            headers.replaceOrAdd(name: "connection", value: "close")
            exchange.closeAfterResponse = true
        } else if http10 {
            headers.replaceOrAdd(name: "connection", value: "keep-alive")
        }
        let status = HTTPResponseStatus(statusCode: head.status.code, reasonPhrase: head.status.reasonPhrase)
        let responseHead = HTTPResponseHead(version: http10 ? .http1_0 : .http1_1, status: status, headers: headers)
        exchange.response = .streaming(bodyAllowed: bodyAllowed, declaredLength: headers.contentLength, written: 0)
        context.write(self.wrapOutboundOut(.head(responseHead)), promise: nil)
        return bodyAllowed
    }

    private func endResponse(_ exchange: Exchange, trailers: HTTPFields?, context: ChannelHandlerContext) {
        exchange.response = .ended
        // NIO's pipelining handler may hand over the next request while this write is under way:
        // the finished exchange must be out of the way first, and the connection's fate known.
        if exchange.requestComplete {
            if self.exchange === exchange { self.exchange = nil }
            if exchange.closeAfterResponse || self.lifecycle != .open { self.lifecycle = .closing }
        }
        let promise = context.eventLoop.makePromise(of: Void.self)
        self.lastWrite = promise.futureResult
        context.writeAndFlush(self.wrapOutboundOut(.end(trailers.map { HTTPHeaders(converting: $0) })), promise: promise)
        self.settle(exchange)
    }

    // MARK: closing

    /// Cuts the connection now: a response already begun is left truncated, which its client
    /// detects.
    private func abort() {
        guard let context, self.lifecycle != .closed else { return }
        self.closeScheduled = true
        self.lifecycle = .closing
        context.close(promise: nil)
    }

    /// Closes once everything written has gone out. With `linger`, stops sending first and
    /// reads (dropping it) what the client is still sending, for a while, so the kernel does not
    /// answer those bytes with a reset that could destroy the response (RFC 9112 §9.6).
    /// (Re)starts the wait for the next bytes of request `id`'s body.
    private func armBodyTimer(_ id: UInt64) {
        self.bodyTimer?.cancel()
        self.bodyTimer = nil
        guard let timeout = self.configuration.bodyReadTimeout, let context, self.lifecycle == .open else { return }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        self.bodyTimer = context.eventLoop.scheduleTask(in: timeout) {
            loopBound.value.bodyTimedOut(id, after: timeout)
        }
    }

    /// Nothing of the body for `bodyReadTimeout`: 408 if no response has begun (RFC 9110
    /// §15.5.9), and the connection closes either way; whoever reads the body gets the error.
    private func bodyTimedOut(_ id: UInt64, after timeout: TimeAmount) {
        self.bodyTimer = nil
        guard let exchange = self.exchange, exchange.id == id, !exchange.requestComplete, !self.readPaused else { return }
        self.logger.debug("a request body stalled; answering 408", metadata: ["serve.peer": "\(self.remoteAddress.map { "\($0)" } ?? "?")"])
        exchange.closeAfterResponse = true
        exchange.source.fail(HTTP2Error.timeout)
        if case .none = exchange.response {
            self.respondNow(
                exchange, status: .requestTimeout,
                message: "the request body stopped arriving: nothing of it for \(timeout.nanoseconds / 1_000_000) ms\n")
        }
        self.closeAfterWrites(linger: false)
    }

    private func closeAfterWrites(linger: Bool) {
        guard let context, !self.closeScheduled, self.lifecycle != .closed else { return }
        self.closeScheduled = true
        self.lifecycle = .closing
        self.idleTimer?.cancel()
        self.idleTimer = nil
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let written = self.lastWrite ?? context.eventLoop.makeSucceededVoidFuture()
        written.whenComplete { _ in
            let connection = loopBound.value
            guard let context = connection.context, connection.lifecycle != .closed else { return }
            guard linger else {
                context.close(promise: nil)
                return
            }
            let closed = context.eventLoop.makePromise(of: Void.self)
            closed.futureResult.whenFailure { _ in loopBound.value.context?.close(promise: nil) }
            context.close(mode: .output, promise: closed)
            connection.lingerTimer = context.eventLoop.scheduleTask(in: Self.lingerTime) {
                loopBound.value.context?.close(promise: nil)
            }
            if let exchange = connection.exchange { exchange.draining = true }
            connection.readIfAppropriate()
        }
    }

    private func armIdleTimer() {
        self.idleTimer?.cancel()
        self.idleTimer = nil
        guard let timeout = self.configuration.idleTimeout, let loopBound, self.lifecycle == .open else { return }
        self.idleTimer = loopBound.eventLoop.scheduleTask(in: timeout) {
            let connection = loopBound.value
            connection.idleTimer = nil
            guard connection.exchange == nil, connection.lifecycle == .open else { return }
            connection.logger.debug("closing idle HTTP/1 connection")
            connection.closeAfterWrites(linger: false)
        }
    }

    private func armHeadTimer() {
        guard let timeout = self.configuration.requestHeadTimeout, let loopBound, self.lifecycle == .open else { return }
        self.headTimer = loopBound.eventLoop.scheduleTask(in: timeout) {
            let connection = loopBound.value
            connection.headTimer = nil
            guard connection.exchange == nil, connection.lifecycle == .open else { return }
            connection.logger.debug(
                "closing HTTP/1 connection: a request head did not complete in time",
                metadata: ["serve.peer": "\(connection.remoteAddress.map { "\($0)" } ?? "?")"])
            connection.closeAfterWrites(linger: false)
        }
    }

    /// Shutdown: an idle connection closes now; a busy one after its response, which says
    /// `Connection: close` if its head has not gone out yet.
    func closeGracefully() {
        guard self.lifecycle == .open else { return }
        self.lifecycle = .quiescing
        guard let exchange = self.exchange else {
            self.closeAfterWrites(linger: false)
            return
        }
        if exchange.responseEnded { self.settle(exchange) }
    }
}

extension HTTPVersion {
    /// HTTP/1.1 or later: chunked coding, persistent connections by default, `Expect`.
    var atLeastHTTP11: Bool { self.major > 1 || (self.major == 1 && self.minor >= 1) }
}
