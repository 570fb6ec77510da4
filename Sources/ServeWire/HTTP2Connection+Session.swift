internal import CNghttp2
import HTTPTypes
import NIOCore

/// The nghttp2 session and its C callbacks.
///
/// The callbacks are free functions that capture nothing (C function pointers cannot) and recover
/// the connection from nghttp2's `user_data` with `Unmanaged`. They do the least they can: copy
/// header fields and body bytes into the stream's state, and record events for later.
extension HTTP2Connection {
    struct SessionSetupError: Error, CustomStringConvertible {
        var description: String
    }

    static func makeSession(
        server: Bool,
        userData: UnsafeMutableRawPointer,
        configuration: HTTP2Configuration
    ) throws -> OpaquePointer {
        var callbacks: OpaquePointer?
        guard nghttp2_session_callbacks_new(&callbacks) == 0, let callbacks else {
            throw SessionSetupError(description: "nghttp2 could not allocate its callbacks")
        }
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, onBeginHeaders)
        nghttp2_session_callbacks_set_on_header_callback(callbacks, onHeader)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, onFrameReceived)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, onDataChunkReceived)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, onStreamClose)

        var option: OpaquePointer?
        guard nghttp2_option_new(&option) == 0, let option else {
            throw SessionSetupError(description: "nghttp2 could not allocate its options")
        }
        defer { nghttp2_option_del(option) }
        // The application acknowledges body bytes once it has read them (flow control that
        // reaches the writer), instead of nghttp2 doing so as soon as they arrive.
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_max_send_header_block_length(option, max(configuration.maxHeaderListSize, 16 << 10))

        var session: OpaquePointer?
        let rv =
            server
            ? nghttp2_session_server_new2(&session, callbacks, userData, option)
            : nghttp2_session_client_new2(&session, callbacks, userData, option)
        guard rv == 0, let session else {
            throw SessionSetupError(description: "nghttp2 could not create a session: \(String(cString: nghttp2_strerror(rv)))")
        }

        var settings: [nghttp2_settings_entry] = [
            .init(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: UInt32(configuration.maxConcurrentStreams)),
            .init(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: UInt32(configuration.initialStreamWindowSize)),
            .init(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: UInt32(configuration.maxHeaderListSize)),
        ]
        if !server {
            settings.append(.init(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0))
        }
        nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), settings, settings.count)
        nghttp2_session_set_local_window_size(
            session,
            UInt8(NGHTTP2_FLAG_NONE.rawValue),
            0,
            Int32(clamping: configuration.connectionWindowSize)
        )
        return session
    }

    /// Submits a reset for one stream (stream-scope error, RFC 9113 §5.4.2).
    func resetStream(_ streamID: Int32, code: UInt32) {
        guard let session else { return }
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), streamID, code)
        self.scheduleFlush()
    }

    /// After nghttp2 gave up on the input (a fatal error from mem_recv), queue a GOAWAY telling
    /// the peer why, unless the peer never spoke HTTP/2 at all (a bad preface).
    func goAwayAfterFatalError(_ error: Int) {
        guard let session else { return }
        switch Int32(truncatingIfNeeded: error) {
        case NGHTTP2_ERR_BAD_CLIENT_MAGIC.rawValue:
            return
        case NGHTTP2_ERR_TOO_MANY_CONTINUATIONS.rawValue, NGHTTP2_ERR_FLOODED.rawValue:
            nghttp2_session_terminate_session(session, HTTP2ErrorCode.enhanceYourCalm)
        default:
            nghttp2_session_terminate_session(session, HTTP2ErrorCode.protocolError)
        }
    }

    /// Ends the whole connection with GOAWAY(code) (a connection error, RFC 9113 §5.4.1).
    func terminate(code: UInt32) {
        guard let session else { return }
        nghttp2_session_terminate_session(session, code)
        self.flush()
    }

    /// The application has read `count` body bytes of a stream: let the peer send that many more.
    func consume(streamID: Int32, count: Int) {
        guard let session, self.terminalError == nil || !self.streams.isEmpty else { return }
        nghttp2_session_consume(session, streamID, count)
        if let stream = self.streams[streamID] { self.bodyRead(stream, count: count) }
        self.scheduleFlush()
    }

    /// Tells nghttp2 a deferred stream has body bytes (or its end) to send again.
    func resumeData(_ stream: HTTP2StreamState) {
        guard stream.deferred, let session else { return }
        stream.deferred = false
        nghttp2_session_resume_data(session, stream.id)
    }

    func submitHeaders(
        streamID: Int32,
        pseudo: KeyValuePairs<String, String>,
        fields: HTTPFields,
        withBody: Bool,
        request: Bool
    ) -> Int32 {
        guard let session else { return -1 }
        return HeaderBlock.with(pseudo: pseudo, fields: fields) { nva, count in
            var provider = nghttp2_data_provider()
            provider.read_callback = dataSourceRead
            return withUnsafePointer(to: &provider) { providerPointer in
                if request {
                    return nghttp2_submit_request(session, nil, nva, count, withBody ? providerPointer : nil, nil)
                }
                return nghttp2_submit_response(session, streamID, nva, count, withBody ? providerPointer : nil)
            }
        }
    }

    func submitTrailers(_ streamID: Int32, _ trailers: HTTPFields) {
        guard let session else { return }
        _ = HeaderBlock.with(pseudo: [:], fields: trailers) { nva, count in
            nghttp2_submit_trailer(session, streamID, nva, count)
        }
    }

    static func errorString(_ code: Int32) -> String {
        String(cString: nghttp2_strerror(code))
    }
}

/// Builds nghttp2's header array with one allocation for all names and values (nghttp2 copies
/// them during the submit call, so the storage lives only for that call).
enum HeaderBlock {
    static func with<R>(
        pseudo: KeyValuePairs<String, String>,
        fields: HTTPFields,
        _ body: (UnsafePointer<nghttp2_nv>, Int) -> R
    ) -> R {
        // HTTP/2 allows `te` with the value "trailers" only (RFC 9113 §8.2.2).
        let specific = ConnectionSpecificFields(of: fields, keepingTETrailers: true)
        func forwarded(_ field: HTTPField) -> Bool { !specific.contains(field) }
        var total = 0
        var count = 0
        for (name, value) in pseudo {
            total += name.utf8.count + value.utf8.count
            count += 1
        }
        for field in fields where forwarded(field) {
            total += field.name.canonicalName.utf8.count + field.withUnsafeBytesOfValue { $0.count }
            count += 1
        }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: max(total, 1)) { storage in
            withUnsafeTemporaryAllocation(of: nghttp2_nv.self, capacity: max(count, 1)) { nva in
                var offset = 0
                var index = 0
                func add(_ name: String, value: UnsafeBufferPointer<UInt8>) {
                    let namePointer = storage.baseAddress! + offset
                    let nameLength = copy(name, to: namePointer)
                    offset += nameLength
                    let valuePointer = storage.baseAddress! + offset
                    if let base = value.baseAddress, value.count > 0 {
                        valuePointer.update(from: base, count: value.count)
                    }
                    offset += value.count
                    nva[index] = nghttp2_nv(
                        name: namePointer,
                        value: valuePointer,
                        namelen: nameLength,
                        valuelen: value.count,
                        flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)
                    )
                    index += 1
                }
                for (name, value) in pseudo {
                    var value = value
                    value.withUTF8 { add(name, value: $0) }
                }
                // A value's bytes as they arrived: header values are octets (RFC 9110 §5.5), and
                // a byte that is not UTF-8 (0xE9 from a Latin-1 client) passes through unchanged.
                for field in fields where forwarded(field) {
                    field.withUnsafeBytesOfValue { add(field.name.canonicalName, value: $0) }
                }
                return body(UnsafePointer(nva.baseAddress!), count)
            }
        }
    }

    private static func copy(_ string: String, to pointer: UnsafeMutablePointer<UInt8>) -> Int {
        var string = string
        return string.withUTF8 { utf8 in
            guard let base = utf8.baseAddress else { return 0 }
            pointer.update(from: base, count: utf8.count)
            return utf8.count
        }
    }
}

/// The field names that nearly every request and response between the nodes carries, made once:
/// a received name is matched by its bytes instead of being made into a `String` and validated
/// for every header of every request (nghttp2 has checked it already, RFC 9113 §8.2.1).
enum KnownFieldNames {
    /// By length, then the names of that length: a miss costs a bounds check or a few compares.
    private static let byLength: [[(bytes: [UInt8], name: HTTPField.Name)]] = {
        let names: [HTTPField.Name] = [
            HTTPField.Name(parsed: ":method")!, HTTPField.Name(parsed: ":path")!, HTTPField.Name(parsed: ":scheme")!,
            HTTPField.Name(parsed: ":authority")!, HTTPField.Name(parsed: ":status")!,
            .contentType, .contentLength, .contentEncoding, .acceptEncoding, .accept, .userAgent, .date,
            .server, .vary, .te, .cacheControl, .authorization, .trailer,
            ServeHeaders.replica, ServeHeaders.forwardedPrefix, ServeHeaders.refused, ServeHeaders.token,
        ]
        var table: [[(bytes: [UInt8], name: HTTPField.Name)]] = Array(repeating: [], count: 32)
        for name in names {
            let bytes = Array(name.canonicalName.utf8)
            table[bytes.count].append((bytes, name))
        }
        return table
    }()

    static func lookup(_ bytes: UnsafeBufferPointer<UInt8>) -> HTTPField.Name? {
        guard bytes.count < Self.byLength.count else { return nil }
        for entry in Self.byLength[bytes.count] where entry.bytes.elementsEqual(bytes) {
            return entry.name
        }
        return nil
    }
}

// MARK: - C callbacks

@inline(__always)
private func connection(_ userData: UnsafeMutableRawPointer?) -> HTTP2Connection {
    Unmanaged<HTTP2Connection>.fromOpaque(userData!).takeUnretainedValue()
}

private let frameTypeHeaders = UInt8(NGHTTP2_HEADERS.rawValue)
private let frameTypeData = UInt8(NGHTTP2_DATA.rawValue)
private let frameTypeGoAway = UInt8(NGHTTP2_GOAWAY.rawValue)
private let flagEndStream = UInt8(NGHTTP2_FLAG_END_STREAM.rawValue)

private func onBeginHeaders(
    _ session: OpaquePointer?,
    _ frame: UnsafePointer<nghttp2_frame>?,
    _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    guard let frame else { return 0 }
    let connection = connection(userData)
    let streamID = frame.pointee.hd.stream_id
    connection.openHeaderBlock = streamID
    if frame.pointee.headers.cat == NGHTTP2_HCAT_REQUEST, connection.isServer {
        connection.openServerStream(streamID)
    } else if let stream = connection.streams[streamID] {
        stream.headerFields.removeAll(keepingCapacity: true)
        stream.headerBytes = 0
    }
    return 0
}

private func onHeader(
    _ session: OpaquePointer?,
    _ frame: UnsafePointer<nghttp2_frame>?,
    _ name: UnsafePointer<UInt8>?,
    _ nameLength: Int,
    _ value: UnsafePointer<UInt8>?,
    _ valueLength: Int,
    _ flags: UInt8,
    _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    guard let frame, let name else { return 0 }
    let connection = connection(userData)
    guard let stream = connection.streams[frame.pointee.hd.stream_id] else { return 0 }
    // RFC 9113 §6.5.2 counts each field as name + value + 32 octets.
    stream.headerBytes += nameLength + valueLength + 32
    if stream.headerBytes > connection.configuration.maxHeaderListSize {
        // Refuse the stream, and end the connection with a GOAWAY saying why.
        connection.logger.debug("peer sent an oversized header block; closing the connection")
        nghttp2_session_terminate_session(session, HTTP2ErrorCode.enhanceYourCalm)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue
    }
    let nameBytes = UnsafeBufferPointer(start: name, count: nameLength)
    guard let fieldName = KnownFieldNames.lookup(nameBytes) ?? HTTPField.Name(parsed: String(decoding: nameBytes, as: UTF8.self))
    else {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue
    }
    let valueBytes = UnsafeBufferPointer(start: value, count: value == nil ? 0 : valueLength)
    stream.headerFields.append(HTTPField(name: fieldName, lenientValue: valueBytes))
    return 0
}

private func onFrameReceived(
    _ session: OpaquePointer?,
    _ frame: UnsafePointer<nghttp2_frame>?,
    _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    guard let frame else { return 0 }
    let connection = connection(userData)
    let header = frame.pointee.hd
    switch header.type {
    case frameTypeHeaders:
        connection.openHeaderBlock = nil
        guard let stream = connection.streams[header.stream_id] else { return 0 }
        let endStream = header.flags & flagEndStream != 0
        if !stream.headReceived {
            // A 1xx response is informational (RFC 9110 §15.2): wait for the final one.
            if let status = stream.headerFields.first(where: { $0.name.canonicalName == ":status" }),
                status.value.hasPrefix("1")
            {
                stream.headerFields.removeAll(keepingCapacity: true)
                return 0
            }
            stream.headReceived = true
            swap(&stream.headFields, &stream.headerFields)
            connection.events.append(.headersComplete(streamID: header.stream_id))
            if endStream { stream.endInboundWithHeaders() }
        } else if endStream {
            let trailers = HTTPFields(stream.headerFields.filter { !$0.name.canonicalName.hasPrefix(":") })
            stream.headerFields.removeAll()
            stream.inboundEnded = true
            stream.inbound.finish(trailers: trailers)
        }
    case frameTypeData:
        if header.flags & flagEndStream != 0, let stream = connection.streams[header.stream_id] {
            stream.inboundEnded = true
            stream.inbound.finish(trailers: nil)
        }
    case frameTypeGoAway:
        connection.events.append(
            .goAway(errorCode: frame.pointee.goaway.error_code, lastStreamID: frame.pointee.goaway.last_stream_id)
        )
    default:
        break
    }
    return 0
}

private func onDataChunkReceived(
    _ session: OpaquePointer?,
    _ flags: UInt8,
    _ streamID: Int32,
    _ data: UnsafePointer<UInt8>?,
    _ length: Int,
    _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    let connection = connection(userData)
    guard let stream = connection.streams[streamID], let data, stream.failure == nil else {
        // Nobody will read these bytes: give the window back at once.
        nghttp2_session_consume(session, streamID, length)
        return 0
    }
    var buffer = connection.allocator.buffer(capacity: length)
    buffer.writeBytes(UnsafeRawBufferPointer(start: data, count: length))
    stream.unreadBodyBytes += length
    stream.inbound.append(buffer)
    return 0
}

private func onStreamClose(
    _ session: OpaquePointer?,
    _ streamID: Int32,
    _ errorCode: UInt32,
    _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    let connection = connection(userData)
    if connection.openHeaderBlock == streamID { connection.openHeaderBlock = nil }
    connection.events.append(.streamClosed(streamID: streamID, errorCode: errorCode))
    return 0
}

/// nghttp2 asks for up to `length` body bytes of a stream. Bytes come from the stream's queue of
/// written chunks; an empty queue defers the stream until a writer adds more (`resumeData`).
private func dataSourceRead(
    _ session: OpaquePointer?,
    _ streamID: Int32,
    _ buffer: UnsafeMutablePointer<UInt8>?,
    _ length: Int,
    _ dataFlags: UnsafeMutablePointer<UInt32>?,
    _ source: UnsafeMutablePointer<nghttp2_data_source>?,
    _ userData: UnsafeMutableRawPointer?
) -> Int {
    let connection = connection(userData)
    guard let stream = connection.streams[streamID], let buffer, let dataFlags else {
        return Int(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
    }
    var written = 0
    while written < length, !stream.pending.isEmpty {
        let index = stream.pending.startIndex
        let take = min(stream.pending[index].readableBytes, length - written)
        stream.pending[index].withUnsafeReadableBytes { bytes in
            (buffer + written).update(from: bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), count: take)
        }
        stream.pending[index].moveReaderIndex(forwardBy: take)
        if stream.pending[index].readableBytes == 0 { stream.pending.removeFirst() }
        written += take
    }
    stream.pendingBytes -= written
    if stream.pendingBytes == 0 && stream.outboundEnded {
        dataFlags.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue
        if let trailers = stream.outboundTrailers, !trailers.isEmpty {
            dataFlags.pointee |= NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
            connection.submitTrailers(streamID, trailers)
        }
    } else if written == 0 {
        stream.deferred = true
        return Int(NGHTTP2_ERR_DEFERRED.rawValue)
    }
    if !stream.writeWaiters.isEmpty, stream.pendingBytes <= connection.configuration.outboundBufferHighWatermark / 2 {
        connection.events.append(.drained(streamID: streamID))
    }
    return written
}
