import HTTPTypes
import Logging
import NIOCore

/// Stream operations: opening streams, sending heads, body chunks and trailers. All run on the
/// connection's event loop; the public handles hop there.
extension HTTP2Connection {
    func makeInbound(_ streamID: Int32) -> InboundBodySource {
        guard let context else { return .empty() }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        return InboundBodySource { count in
            loopBound.performLater { $0.consume(streamID: streamID, count: count) }
        }
    }

    /// Server: a peer opened a stream with a request HEADERS frame.
    func openServerStream(_ streamID: Int32) {
        self.streams[streamID] = HTTP2StreamState(id: streamID, connection: self)
        self.cancelIdleTimer()
    }

    // MARK: server side

    func requestHeadReceived(_ stream: HTTP2StreamState, handler: @escaping HTTP2Server.Handler) {
        guard let context else { return }
        var head: HTTPRequest
        do {
            head = try HTTPRequest(parsed: stream.headFields)
        } catch {
            self.logger.debug("refusing a malformed request head", metadata: ["error": "\(error)"])
            self.resetStream(stream.id, code: HTTP2ErrorCode.protocolError)
            return
        }
        stream.headFields = []
        var decoding: ContentCoding?
        if let encoding = head.headerFields[.contentEncoding], encoding.lowercased() != "identity" {
            guard let coding = ContentCoding(contentEncodingHeader: encoding) else {
                self.respondNow(stream, status: .unsupportedMediaType, message: "unsupported content-encoding '\(encoding)'; send gzip, deflate or identity\n")
                return
            }
            decoding = coding
            head.headerFields[.contentEncoding] = nil
            head.headerFields[.contentLength] = nil
        }
        // Compression is a hop's business, asked for by a ServeWire client with its own field;
        // the end client's `accept-encoding` is the origin's to answer (RFC 9110 §12.5.3).
        if self.configuration.compression.enabled {
            stream.acceptedCoding = ContentCoding.negotiate(acceptEncoding: head.headerFields[ServeHeaders.acceptHopCoding])
        }
        head.headerFields[ServeHeaders.acceptHopCoding] = nil
        stream.isHeadRequest = head.method == .head
        if !stream.inboundEnded { self.watchBody(stream) }
        let request = HTTPServerRequest(
            head: head,
            body: HTTPBody(source: stream.inbound, decoding: decoding, decodeLimit: self.configuration.maxDecompressedBodySize),
            remoteAddress: self.remoteAddress,
            hasBody: !stream.endedWithHeaders
        )
        let writer = HTTP2ResponseWriter(
            connection: NIOLoopBound(self, eventLoop: context.eventLoop),
            streamID: stream.id
        )
        let logger = self.logger
        stream.handlerTask = Task(executorPreference: self.taskExecutor) {
            do {
                try await handler(request, writer)
                try await writer.finishIfNeeded()
            } catch {
                logger.debug("HTTP/2 request handler failed", metadata: ["error": "\(error)"])
                writer.abort(error)
            }
        }
    }

    /// Answers a request at once from the event loop (refusals decided by the connection).
    func respondNow(_ stream: HTTP2StreamState, status: HTTPResponse.Status, message: String) {
        var fields = HTTPFields()
        fields[.contentType] = "text/plain; charset=utf-8"
        self.respond(
            streamID: stream.id,
            head: HTTPResponse(status: status, headerFields: fields),
            body: ByteBuffer(string: message),
            trailers: nil
        )
    }

    /// Server: the response head alone; body chunks follow with `write`.
    func writeHead(streamID: Int32, head: HTTPResponse) throws {
        let stream = try self.writableStream(streamID)
        guard !stream.headSubmitted else { throw HTTP2Error.protocolError("the response head was already sent") }
        var head = head
        Self.removeForbiddenFraming(&head)
        let length = head.headerFields[.contentLength].flatMap { Int($0) }
        if stream.isHeadRequest || !head.status.allowsBody {
            stream.dropsBody = true
        } else {
            stream.declaredLength = length
        }
        self.chooseResponseCoding(stream, head: &head, knownLength: length)
        try self.submitResponseHead(stream, head: head, withBody: true)
    }

    /// RFC 9110 §8.6: a 1xx or 204 response carries no `content-length` (a 304's, like a HEAD
    /// response's, is the length a GET would get, and stays).
    static func removeForbiddenFraming(_ head: inout HTTPResponse) {
        if head.status.code == 204 || head.status.kind == .informational {
            head.headerFields[.contentLength] = nil
        }
    }

    /// Server: a whole response in one step (head, body, trailers): the common case, one hop.
    func respond(streamID: Int32, head: HTTPResponse, body: ByteBuffer?, trailers: HTTPFields?) {
        guard let stream = try? self.writableStream(streamID), !stream.headSubmitted else { return }
        var head = head
        var body = body ?? ByteBuffer()
        Self.removeForbiddenFraming(&head)
        let bodyless = stream.isHeadRequest || !head.status.allowsBody
        if bodyless {
            // A HEAD response keeps the length the handler gave (the GET's, RFC 9110 §9.3.2), or
            // says the length of what it wrote; a 304 keeps one it was given. Nothing is sent.
            if stream.isHeadRequest, head.status.allowsBody, head.headerFields[.contentLength] == nil, body.readableBytes > 0 {
                head.headerFields[.contentLength] = String(body.readableBytes)
            }
            body.clear()
        } else {
            self.chooseResponseCoding(stream, head: &head, knownLength: body.readableBytes)
        }
        if let compressor = stream.compressor {
            var compressed = ByteBuffer()
            do {
                try compressor.compress(body, into: &compressed)
                try compressor.finish(into: &compressed)
            } catch {
                self.resetStream(streamID, code: HTTP2ErrorCode.internalError)
                return
            }
            stream.compressor = nil
            body = compressed
        }
        if !bodyless {
            head.headerFields[.contentLength] = String(body.readableBytes)
        }
        let hasBody = body.readableBytes > 0 || (trailers.map { !$0.isEmpty } ?? false)
        if body.readableBytes > 0 {
            stream.pendingBytes = body.readableBytes
            stream.pending.append(body)
        }
        stream.outboundEnded = true
        stream.outboundTrailers = trailers
        try? self.submitResponseHead(stream, head: head, withBody: hasBody)
    }

    /// Decides whether to compress a response for this hop: the client must be a ServeWire peer
    /// that asked for it (`ServeHeaders.acceptHopCoding`), the body must be large enough to pay
    /// for it (when its length is known), and not encoded already. The response's own
    /// `content-length` travels in `ServeHeaders.hopDecodedLength`, and the client puts it back:
    /// no `content-encoding`, no `vary`, nothing the handler did not say reaches its caller.
    private func chooseResponseCoding(_ stream: HTTP2StreamState, head: inout HTTPResponse, knownLength: Int?) {
        let compression = self.configuration.compression
        guard compression.enabled, let coding = stream.acceptedCoding, !stream.isHeadRequest,
            let length = knownLength, length >= compression.minimumSize,
            head.headerFields[.contentEncoding] == nil,
            head.status.allowsBody
        else { return }
        stream.compressor = StreamingCompressor(coding: coding, level: compression.level)
        head.headerFields[ServeHeaders.hopCoding] = coding.rawValue
        head.headerFields[ServeHeaders.hopDecodedLength] = String(length)
        head.headerFields[.contentLength] = nil
    }

    private func submitResponseHead(_ stream: HTTP2StreamState, head: HTTPResponse, withBody: Bool) throws {
        stream.headSubmitted = true
        let status = String(head.status.code)
        let rv = self.submitHeaders(streamID: stream.id, pseudo: [":status": status], fields: head.headerFields, withBody: withBody, request: false)
        guard rv >= 0 else {
            throw HTTP2Error.protocolError("could not send the response head: \(Self.errorString(rv))")
        }
        self.scheduleFlush()
    }

    // MARK: client side

    /// Client: opens a stream with a request head. With `body`, the whole body is queued at once
    /// (and compressed when worth it); with `endStream`, the request has no body at all.
    func openClientStream(
        head: HTTPRequest,
        body: ByteBuffer?,
        endStream: Bool,
        timeout: TimeAmount?
    ) throws -> (streamID: Int32, response: EventLoopFuture<HTTP2Response>) {
        guard let context, self.session != nil else { throw HTTP2Error.connectionClosed }
        if let terminalError = self.terminalError { throw terminalError }
        var head = head
        let compression = self.configuration.compression
        // The response may come back compressed for this hop only; the caller's own
        // `accept-encoding` (if any) goes to the server untouched.
        head.headerFields[ServeHeaders.acceptHopCoding] = compression.enabled ? "gzip, deflate" : nil
        var body = body
        var compressor: StreamingCompressor?
        if compression.enabled, compression.compressRequests, head.headerFields[.contentEncoding] == nil,
            body.map({ $0.readableBytes >= compression.minimumSize }) ?? !endStream
        {
            let streaming = StreamingCompressor(coding: .gzip, level: compression.level)
            head.headerFields[.contentEncoding] = ContentCoding.gzip.rawValue
            head.headerFields[.contentLength] = nil
            if let whole = body {
                var compressed = ByteBuffer()
                try streaming.compress(whole, into: &compressed)
                try streaming.finish(into: &compressed)
                body = compressed
            } else {
                compressor = streaming
            }
        }
        let withBody = !endStream || (body.map { $0.readableBytes > 0 } ?? false)
        let rv = self.submitHeaders(
            streamID: 0,
            pseudo: [
                ":method": head.method.rawValue,
                ":scheme": head.scheme ?? "http",
                ":authority": head.authority ?? "localhost",
                ":path": head.path ?? "/",
            ],
            fields: head.headerFields,
            withBody: withBody,
            request: true
        )
        guard rv > 0 else {
            throw HTTP2Error.protocolError("could not start a stream: \(Self.errorString(rv))")
        }
        let stream = HTTP2StreamState(id: rv, connection: self)
        stream.headSubmitted = true
        stream.compressor = compressor
        if let body, body.readableBytes > 0 {
            stream.pending.append(body)
            stream.pendingBytes = body.readableBytes
        }
        stream.outboundEnded = endStream || body != nil
        let promise = context.eventLoop.makePromise(of: HTTP2Response.self)
        stream.responsePromise = promise
        self.streams[rv] = stream
        self.cancelIdleTimer()
        if let timeout {
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            stream.timeout = context.eventLoop.scheduleTask(in: timeout) {
                loopBound.value.cancelStream(rv, error: .timeout)
            }
        }
        self.scheduleFlush()
        return (rv, promise.futureResult)
    }

    func responseHeadReceived(_ stream: HTTP2StreamState) {
        guard var head = try? HTTPResponse(parsed: stream.headFields) else {
            self.cancelStream(stream.id, error: .protocolError("the response head is malformed"), code: HTTP2ErrorCode.protocolError)
            return
        }
        stream.headFields = []
        // Only a hop coding is decoded here; a `content-encoding` is the origin's and passes on
        // untouched, as does its `content-length` (restored when the hop compressed the body).
        var decoding: ContentCoding?
        if let hop = head.headerFields[ServeHeaders.hopCoding] {
            guard let coding = ContentCoding(contentEncodingHeader: hop) else {
                self.cancelStream(stream.id, error: .protocolError("unknown hop coding '\(hop)'"), code: HTTP2ErrorCode.protocolError)
                return
            }
            decoding = coding
            head.headerFields[.contentLength] = head.headerFields[ServeHeaders.hopDecodedLength]
        }
        head.headerFields[ServeHeaders.hopCoding] = nil
        head.headerFields[ServeHeaders.hopDecodedLength] = nil
        stream.timeout?.cancel()
        stream.timeout = nil
        let body = HTTPBody(source: stream.inbound, decoding: decoding, decodeLimit: self.configuration.maxDecompressedBodySize)
        stream.responsePromise?.succeed(HTTP2Response(head: head, body: body))
        stream.responsePromise = nil
    }

    /// Ends a stream from this side: resets it and fails whoever waits on it with `error`.
    func cancelStream(_ streamID: Int32, error: HTTP2Error, code: UInt32 = HTTP2ErrorCode.cancel) {
        guard let stream = self.streams[streamID] else { return }
        stream.fail(error)
        self.resetStream(streamID, code: code)
    }

    // MARK: both sides: the body

    private func writableStream(_ streamID: Int32) throws -> HTTP2StreamState {
        guard let stream = self.streams[streamID] else { throw self.terminalError ?? HTTP2Error.streamClosed }
        if let failure = stream.failure { throw failure }
        guard !stream.outboundEnded else { throw HTTP2Error.streamClosed }
        return stream
    }

    /// Queues a body chunk. Returns nil when the stream's queue has room for more, else a future
    /// that completes once it is below its high watermark again: that is how a writer feels the
    /// peer's flow control.
    func write(streamID: Int32, chunk: ByteBuffer) throws -> EventLoopFuture<Void>? {
        let stream = try self.writableStream(streamID)
        if !stream.headSubmitted {
            try self.writeHead(streamID: streamID, head: HTTPResponse(status: .ok))
        }
        // HEAD, 204 and 304 responses have no body: what is written for them is dropped.
        if stream.dropsBody { return nil }
        if let declared = stream.declaredLength, stream.bodyWritten + chunk.readableBytes > declared {
            throw HTTP2Error.protocolError("the body is longer than the \(declared) bytes its content-length announced")
        }
        stream.bodyWritten += chunk.readableBytes
        var chunk = chunk
        if let compressor = stream.compressor {
            var compressed = ByteBuffer()
            try compressor.compress(chunk, into: &compressed)
            chunk = compressed
        }
        if chunk.readableBytes > 0 {
            stream.pendingBytes += chunk.readableBytes
            stream.pending.append(chunk)
            self.resumeData(stream)
            self.scheduleFlush()
        }
        guard stream.pendingBytes > self.configuration.outboundBufferHighWatermark, let context else { return nil }
        return stream.writeWaiters.wait(on: context.eventLoop)
    }

    /// Ends the body, with trailers if given.
    func finish(streamID: Int32, trailers: HTTPFields?) throws {
        let stream = try self.writableStream(streamID)
        if !stream.headSubmitted {
            self.respond(streamID: streamID, head: HTTPResponse(status: .ok), body: nil, trailers: trailers)
            return
        }
        if let declared = stream.declaredLength, stream.bodyWritten < declared {
            // A body cut short must reach the client as a cut (RST_STREAM), never as a complete
            // answer with END_STREAM.
            let error = HTTP2Error.protocolError(
                "the body ended after \(stream.bodyWritten) of the \(declared) bytes its content-length announced")
            self.cutStream(streamID, error: error)
            throw error
        }
        if let compressor = stream.compressor {
            var tail = ByteBuffer()
            try compressor.finish(into: &tail)
            stream.compressor = nil
            if tail.readableBytes > 0 {
                stream.pendingBytes += tail.readableBytes
                stream.pending.append(tail)
            }
        }
        stream.outboundEnded = true
        stream.outboundTrailers = trailers
        self.resumeData(stream)
        self.scheduleFlush()
    }

    /// Server: called when a handler returns. An unanswered request gets a 500; an unfinished
    /// body is ended.
    func finishIfNeeded(streamID: Int32) {
        guard let stream = self.streams[streamID], stream.failure == nil, !stream.outboundEnded else { return }
        if !stream.headSubmitted {
            self.respondNow(stream, status: .internalServerError, message: "the handler returned without a response\n")
        } else {
            try? self.finish(streamID: streamID, trailers: nil)
        }
    }

    /// Server: a handler threw. Before the head went out the client gets a 500 saying so; after
    /// it, the stream is reset, since a truncated body must not look complete.
    func abort(streamID: Int32, error: any Error) {
        guard let stream = self.streams[streamID], stream.failure == nil else { return }
        if !stream.headSubmitted {
            let answer = ServerAnswer(handlerFailure: error)
            self.respondNow(stream, status: answer.status, message: answer.message)
        } else {
            self.cutStream(streamID, error: .streamReset(code: HTTP2ErrorCode.internalError))
        }
    }

    /// Ends a response whose head went out with a reset, after sending what was written of it:
    /// nghttp2 sends a queued RST_STREAM before the stream's queued HEADERS and DATA and drops
    /// those, so without the flush the peer could see no response at all (and retry a request
    /// that was answered) instead of a response cut short.
    private func cutStream(_ streamID: Int32, error: HTTP2Error, code: UInt32 = HTTP2ErrorCode.internalError) {
        self.flush()
        self.cancelStream(streamID, error: error, code: code)
    }

    // MARK: server side: a request body that stops arriving

    /// Server: starts watching a request body for stalls (`bodyReadTimeout`), from now.
    private func watchBody(_ stream: HTTP2StreamState) {
        guard self.configuration.bodyReadTimeout != nil else { return }
        stream.watchesBody = true
        stream.bodyProgress = .now()
        self.armBodyTimer(stream)
    }

    /// The handler has read `count` bytes of a stream's body: once it has caught up with what
    /// arrived, the wait for more is the client's again, and counts from now.
    func bodyRead(_ stream: HTTP2StreamState, count: Int) {
        stream.unreadBodyBytes = max(0, stream.unreadBodyBytes - count)
        guard stream.watchesBody, stream.unreadBodyBytes == 0 else { return }
        stream.bodyProgress = .now()
        self.armBodyTimer(stream)
    }

    /// One timer per stream, not one per chunk: reads only move `bodyProgress`, and the timer,
    /// when it fires early, moves itself to the new deadline.
    private func armBodyTimer(_ stream: HTTP2StreamState) {
        guard stream.bodyTimer == nil, let timeout = self.configuration.bodyReadTimeout, let context else { return }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let streamID = stream.id
        stream.bodyTimer = context.eventLoop.scheduleTask(deadline: stream.bodyProgress + timeout) {
            loopBound.value.bodyTimerFired(streamID, timeout: timeout)
        }
    }

    private func bodyTimerFired(_ streamID: Int32, timeout: TimeAmount) {
        guard let stream = self.streams[streamID] else { return }
        stream.bodyTimer = nil
        guard stream.watchesBody, stream.failure == nil, !stream.inboundEnded else { return }
        // Unread bytes: this side holds the client back; `bodyRead` starts the wait again.
        guard stream.unreadBodyBytes == 0 else { return }
        if NIODeadline.now() < stream.bodyProgress + timeout {
            self.armBodyTimer(stream)
            return
        }
        self.bodyStalled(stream, after: timeout)
    }

    /// Nothing of a request body for `bodyReadTimeout` while its handler waited: this stream
    /// alone ends. 408 if no response has begun (RFC 9110 §15.5.9), then RST_STREAM(NO_ERROR)
    /// so the client stops sending (RFC 9113 §8.1); a response under way is cut (RST_STREAM
    /// CANCEL), never ended as if complete. The handler's body read fails with `.timeout`.
    private func bodyStalled(_ stream: HTTP2StreamState, after timeout: TimeAmount) {
        self.logger.debug(
            "a request body stalled; ending its stream",
            metadata: ["serve.peer": "\(self.remoteAddress.map { "\($0)" } ?? "?")", "serve.stream": "\(stream.id)"]
        )
        let streamID = stream.id
        if !stream.headSubmitted {
            self.respondNow(
                stream, status: .requestTimeout,
                message: "the request body stopped arriving: nothing of it for \(timeout.nanoseconds / 1_000_000) ms\n")
            self.cutStream(streamID, error: .timeout, code: HTTP2ErrorCode.noError)
        } else if stream.outboundEnded {
            // The response is complete: only the client's unfinished upload is left to stop.
            self.cutStream(streamID, error: .timeout, code: HTTP2ErrorCode.noError)
        } else {
            self.cutStream(streamID, error: .timeout, code: HTTP2ErrorCode.cancel)
        }
    }
}

// MARK: - From any thread

extension NIOLoopBound where Value == HTTP2Connection {
    /// Sends one body chunk on a stream from any thread; returns once the stream's send queue has
    /// room. What a client's request stream and a server's response writer both do.
    func write(streamID: Int32, chunk: ByteBuffer) async throws {
        try await self.performWrite { try $0.write(streamID: streamID, chunk: chunk) }
    }

    /// Ends a stream's body from any thread, with trailers if given.
    func finish(streamID: Int32, trailers: HTTPFields?) async throws {
        try await self.perform { try $0.finish(streamID: streamID, trailers: trailers) }
    }
}
