internal import CNghttp2
import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// One HTTP/2 connection, client or server: a SwiftNIO channel handler that owns an
/// `nghttp2_session` and feeds it through nghttp2's in-memory API, so NIO owns the socket and
/// nghttp2 does framing, HPACK and flow control.
///
/// Everything here runs on the channel's event loop. nghttp2 calls back into this object while
/// `mem_recv`/`mem_send` run; those callbacks only record what happened (in `events`) or move
/// bytes, and the records are acted on after nghttp2 has returned, so no application code ever
/// runs inside nghttp2 (re-entrancy was what hurt swift-nio-http2's nghttp2 era, commit 3c90345).
final class HTTP2Connection: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Role {
        case client
        case server(HTTP2Server.Handler)
    }

    /// What an nghttp2 callback saw, acted on once nghttp2 has returned.
    enum Event {
        case headersComplete(streamID: Int32)
        case streamClosed(streamID: Int32, errorCode: UInt32)
        case goAway(errorCode: UInt32, lastStreamID: Int32)
        case drained(streamID: Int32)
        case connectionError(String)
    }

    let role: Role
    let configuration: HTTP2Configuration
    let logger: Logger
    /// Mirrors whether new streams may start, readable from any thread (pool bookkeeping).
    let availability = NIOLockedValueBox(true)

    var session: OpaquePointer?
    var context: ChannelHandlerContext?
    var streams: [Int32: HTTP2StreamState] = [:]
    var events: [Event] = []
    private var spareEvents: [Event] = []
    /// True while nghttp2's mem_recv or mem_send is on the stack.
    var insideNghttp2 = false
    private var processingEvents = false
    private var flushScheduled = false
    /// The last flush's output buffer, reused by the next (`takeOutputBuffer`).
    private var spareOutput: ByteBuffer?
    /// Set once the connection can carry no more streams; the error every new call gets.
    var terminalError: HTTP2Error?
    private var idleTimer: Scheduled<Void>?
    /// The stream whose header block has begun and not yet ended, if any (servers).
    var openHeaderBlock: Int32?
    /// Armed only while a read ends inside a header block: complete blocks, the usual case, cost
    /// no timer at all.
    private var headerBlockTimer: Scheduled<Void>?
    var remoteAddress: SocketAddress?
    let allocator = ByteBufferAllocator()
    /// Where request handlers run (servers): this connection's event loop.
    private(set) var taskExecutor: EventLoopTaskExecutor?

    init(role: Role, configuration: HTTP2Configuration, logger: Logger) {
        self.role = role
        self.configuration = configuration
        self.logger = logger
        self.events.reserveCapacity(16)
        self.spareEvents.reserveCapacity(16)
    }

    deinit {
        if let session { nghttp2_session_del(session) }
    }

    var isServer: Bool {
        if case .server = self.role { return true }
        return false
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
        guard self.session == nil else { return }
        self.remoteAddress = context.channel.remoteAddress
        do {
            self.session = try HTTP2Connection.makeSession(
                server: self.isServer,
                userData: Unmanaged.passUnretained(self).toOpaque(),
                configuration: self.configuration
            )
        } catch {
            self.logger.error("could not start an HTTP/2 session", metadata: ["error": "\(error)"])
            self.terminalError = .protocolError("\(error)")
            context.close(promise: nil)
            return
        }
        self.armIdleTimer()
        self.flush()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        guard let session = self.session else { return }
        let result = buffer.withUnsafeReadableBytes { bytes -> Int in
            self.insideNghttp2 = true
            defer { self.insideNghttp2 = false }
            return nghttp2_session_mem_recv(session, bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count)
        }
        if result < 0 {
            let message = String(cString: nghttp2_strerror(Int32(truncatingIfNeeded: result)))
            self.logger.debug(
                "closing HTTP/2 connection after a fatal protocol error",
                metadata: ["serve.peer": "\(self.remoteAddress.map { "\($0)" } ?? "?")", "error": "\(message)"]
            )
            self.events.append(.connectionError(message))
        }
        self.processEvents()
        if result < 0 {
            self.goAwayAfterFatalError(result)
            self.flush()
            context.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.flush()
        self.watchHeaderBlock(context: context)
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.flush() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.connectionClosed(error: self.terminalError ?? .connectionClosed)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.logger.debug("HTTP/2 connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.connectionClosed(error: self.terminalError ?? .connectionClosed)
        self.context = nil
    }

    /// An unfinished header block stalls the whole connection (HPACK state is shared, RFC 9113
    /// §4.3), so a peer that leaves one open past `requestHeadTimeout` loses the connection.
    private func watchHeaderBlock(context: ChannelHandlerContext) {
        guard let timeout = self.configuration.requestHeadTimeout else { return }
        if self.openHeaderBlock == nil {
            self.headerBlockTimer?.cancel()
            self.headerBlockTimer = nil
        } else if self.headerBlockTimer == nil {
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            let stream = self.openHeaderBlock
            self.headerBlockTimer = context.eventLoop.scheduleTask(in: timeout) {
                let connection = loopBound.value
                connection.headerBlockTimer = nil
                guard connection.openHeaderBlock != nil else { return }
                guard connection.openHeaderBlock == stream else {
                    // Another block began since: give it its own full timeout.
                    if let context = connection.context { connection.watchHeaderBlock(context: context) }
                    return
                }
                connection.logger.debug("a header block did not complete in time; closing the connection")
                connection.terminate(code: HTTP2ErrorCode.enhanceYourCalm)
            }
        }
    }

    // MARK: the send side

    /// Coalesces the output of several operations in one loop tick into one write.
    func scheduleFlush() {
        guard !self.flushScheduled, let context else { return }
        self.flushScheduled = true
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.execute { loopBound.value.flush() }
    }

    /// Moves whatever nghttp2 has to send (frames, and body bytes as flow control allows) onto
    /// the socket, stopping while the channel is not writable so TCP backpressure reaches the
    /// streams' writers.
    func flush() {
        self.flushScheduled = false
        guard let context, let session, !self.insideNghttp2 else { return }
        var output: ByteBuffer?
        var wroteAny = false
        while context.channel.isWritable {
            var pointer: UnsafePointer<UInt8>?
            self.insideNghttp2 = true
            let count = nghttp2_session_mem_send(session, &pointer)
            self.insideNghttp2 = false
            if count < 0 {
                let message = String(cString: nghttp2_strerror(Int32(truncatingIfNeeded: count)))
                self.events.append(.connectionError(message))
                break
            }
            guard count > 0, let pointer else { break }
            if output == nil { output = self.takeOutputBuffer(context: context, minimumCapacity: count) }
            output!.writeBytes(UnsafeRawBufferPointer(start: pointer, count: count))
            if output!.readableBytes >= 64 << 10 {
                context.write(self.wrapOutboundOut(output.take()!), promise: nil)
                wroteAny = true
            }
        }
        if let output, output.readableBytes > 0 {
            context.write(self.wrapOutboundOut(output), promise: nil)
            wroteAny = true
            // Kept for the next flush: by then the socket has usually taken these bytes and the
            // storage is ours alone again, so clearing it reuses it instead of allocating anew.
            self.spareOutput = output
        }
        if wroteAny { context.flush() }
        self.processEvents()
        self.closeIfDone()
    }

    /// A buffer for a flush's frames: the last flush's, cleared, when nothing else holds it.
    private func takeOutputBuffer(context: ChannelHandlerContext, minimumCapacity: Int) -> ByteBuffer {
        guard var buffer = self.spareOutput.take() else {
            return context.channel.allocator.buffer(capacity: max(minimumCapacity, 16 << 10))
        }
        buffer.clear(minimumCapacity: max(minimumCapacity, 16 << 10))
        return buffer
    }

    /// nghttp2 wants neither to read nor to write once a GOAWAY has gone either way and every
    /// stream has ended: that is the moment to close the socket.
    private func closeIfDone() {
        guard let session, let context, context.channel.isActive else { return }
        if nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0 {
            self.terminalError = self.terminalError ?? .connectionClosed
            context.close(promise: nil)
        }
    }

    // MARK: events

    func processEvents() {
        guard !self.processingEvents else { return }
        self.processingEvents = true
        defer { self.processingEvents = false }
        while !self.events.isEmpty {
            swap(&self.events, &self.spareEvents)
            for event in self.spareEvents { self.handle(event) }
            self.spareEvents.removeAll(keepingCapacity: true)
        }
    }

    private func handle(_ event: Event) {
        switch event {
        case .headersComplete(let streamID):
            guard let stream = self.streams[streamID] else { return }
            switch self.role {
            case .server(let handler): self.requestHeadReceived(stream, handler: handler)
            case .client: self.responseHeadReceived(stream)
            }
        case .streamClosed(let streamID, let errorCode):
            guard let stream = self.streams.removeValue(forKey: streamID) else { return }
            let error: HTTP2Error
            switch errorCode {
            case HTTP2ErrorCode.noError: error = .streamClosed
            case HTTP2ErrorCode.refusedStream: error = .refused
            default: error = .streamReset(code: errorCode)
            }
            stream.fail(error)
            if errorCode != HTTP2ErrorCode.noError { stream.handlerTask?.cancel() }
            if self.streams.isEmpty { self.armIdleTimer() }
        case .goAway(let errorCode, let lastStreamID):
            self.logger.debug(
                "peer sent GOAWAY",
                metadata: ["code": "\(HTTP2ErrorCodeName.name(errorCode))", "last_stream": "\(lastStreamID)"]
            )
            self.markUnavailable(.goAway(code: errorCode, lastStreamID: lastStreamID))
        case .drained(let streamID):
            self.streams[streamID]?.releaseWriters(highWatermark: self.configuration.outboundBufferHighWatermark)
        case .connectionError(let message):
            self.markUnavailable(.protocolError(message))
        }
    }

    private func markUnavailable(_ error: HTTP2Error) {
        if self.terminalError == nil { self.terminalError = error }
        self.availability.withLockedValue { $0 = false }
    }

    private func connectionClosed(error: HTTP2Error) {
        self.markUnavailable(error)
        self.idleTimer?.cancel()
        self.idleTimer = nil
        let streams = self.streams
        self.streams.removeAll()
        for stream in streams.values {
            stream.fail(.connectionClosed)
            stream.handlerTask?.cancel()
        }
    }

    // MARK: idle and graceful close

    func armIdleTimer() {
        self.idleTimer?.cancel()
        self.idleTimer = nil
        guard let timeout = self.configuration.idleTimeout, let context else { return }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        self.idleTimer = context.eventLoop.scheduleTask(in: timeout) {
            let connection = loopBound.value
            guard connection.streams.isEmpty else { return }
            connection.logger.debug("closing idle HTTP/2 connection")
            connection.closeGracefully()
        }
    }

    func cancelIdleTimer() {
        self.idleTimer?.cancel()
        self.idleTimer = nil
    }

    /// Sends GOAWAY so the peer starts nothing new, lets open streams finish, then closes
    /// (RFC 9113 §6.8).
    func closeGracefully() {
        guard let session, let context else { return }
        self.markUnavailable(.goAway(code: HTTP2ErrorCode.noError, lastStreamID: 0))
        if self.isServer {
            let lastStreamID = nghttp2_session_get_last_proc_stream_id(session)
            nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), lastStreamID, HTTP2ErrorCode.noError, nil, 0)
        } else {
            nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, HTTP2ErrorCode.noError, nil, 0)
        }
        if !context.channel.isActive { return }
        self.flush()
        if self.streams.isEmpty { context.close(promise: nil) }
    }
}
