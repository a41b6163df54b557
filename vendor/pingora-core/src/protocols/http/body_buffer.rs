// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

use bytes::{Bytes, BytesMut};

/// A buffer with size limit. When the total amount of data written to the buffer is below the limit
/// all the data will be held in the buffer. Otherwise, the buffer will report to be truncated.
pub struct FixedBuffer {
    // keygate patch: a body that came in one piece is held as that piece, shared with whoever else
    // holds it, not copied; `buffer` collects the pieces once there are two, and `seal` freezes
    // them into `whole` once the body is complete. 0.9.1 copied every piece into `buffer`, and
    // `get_buffer` copied `buffer` again, so a proxied request body was copied twice and held twice.
    whole: Option<Bytes>,
    buffer: BytesMut,
    capacity: usize,
    truncated: bool,
}

impl FixedBuffer {
    pub fn new(capacity: usize) -> Self {
        FixedBuffer {
            whole: None, // keygate patch
            buffer: BytesMut::new(),
            capacity,
            truncated: false,
        }
    }

    // keygate patch: see `whole`
    pub fn write_to_buffer(&mut self, data: &Bytes) {
        if self.truncated || data.is_empty() {
            return;
        }
        let held = self.whole.as_ref().map_or(self.buffer.len(), Bytes::len);
        if held + data.len() > self.capacity {
            // Buffered data is no longer usable for a retry, so release its allocation.
            self.whole = None;
            self.buffer = BytesMut::new();
            self.truncated = true;
            return;
        }
        match self.whole.take() {
            Some(first) => {
                self.buffer.reserve(first.len() + data.len());
                self.buffer.extend_from_slice(&first);
                self.buffer.extend_from_slice(data);
            }
            None if self.buffer.is_empty() => self.whole = Some(data.clone()),
            None => self.buffer.extend_from_slice(data),
        }
    }

    /// keygate patch: the body is complete; what `buffer` collected is frozen into `whole`, so
    /// that `get_buffer` hands out handles on it instead of copies. A later write (the buffer
    /// reused without `clear`) copies it back.
    pub fn seal(&mut self) {
        if self.whole.is_none() && !self.buffer.is_empty() {
            self.whole = Some(std::mem::take(&mut self.buffer).freeze());
        }
    }

    pub fn clear(&mut self) {
        self.truncated = false;
        self.whole = None; // keygate patch
        self.buffer.clear();
    }
    pub fn is_empty(&self) -> bool {
        self.whole.is_none() && self.buffer.is_empty() // keygate patch
    }
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }
    pub fn get_buffer(&self) -> Option<Bytes> {
        // TODO: return None if truncated?
        if let Some(whole) = &self.whole {
            // keygate patch
            Some(whole.clone())
        } else if !self.is_empty() {
            Some(self.buffer.clone().freeze())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_storage_when_truncated() {
        let mut buffer = FixedBuffer::new(4);
        // keygate patch: two pieces, so that they are copied into `buffer`
        buffer.write_to_buffer(&Bytes::from_static(b"12"));
        buffer.write_to_buffer(&Bytes::from_static(b"34"));
        assert!(buffer.buffer.capacity() >= 4);

        buffer.write_to_buffer(&Bytes::from_static(b"5"));

        assert!(buffer.is_truncated());
        assert_eq!(buffer.buffer.capacity(), 0);
        assert!(buffer.get_buffer().is_none());
    }

    // keygate patch: the tests of a body held as the piece it came in
    #[test]
    fn a_body_in_one_piece_is_held_shared_not_copied() {
        let body = Bytes::from(b"{\"model\": \"m\"}".to_vec());
        let mut buffer = FixedBuffer::new(64);
        buffer.write_to_buffer(&body);
        let held = buffer.get_buffer().unwrap();
        assert_eq!(held, body);
        assert_eq!(held.as_ptr(), body.as_ptr());
        assert_eq!(buffer.buffer.capacity(), 0);
    }

    #[test]
    fn a_sealed_body_in_pieces_is_handed_out_without_copies() {
        let mut buffer = FixedBuffer::new(8);
        buffer.write_to_buffer(&Bytes::from_static(b"ab"));
        buffer.write_to_buffer(&Bytes::from_static(b"cd"));
        buffer.seal();
        let first = buffer.get_buffer().unwrap();
        let second = buffer.get_buffer().unwrap();
        assert_eq!(first, Bytes::from_static(b"abcd"));
        assert_eq!(first.as_ptr(), second.as_ptr());

        // written to again, it still holds everything, in order
        buffer.write_to_buffer(&Bytes::from_static(b"ef"));
        assert_eq!(buffer.get_buffer().unwrap(), Bytes::from_static(b"abcdef"));
    }

    #[test]
    fn a_body_in_pieces_is_held_whole_in_order() {
        let mut buffer = FixedBuffer::new(8);
        buffer.write_to_buffer(&Bytes::from_static(b"ab"));
        buffer.write_to_buffer(&Bytes::new());
        buffer.write_to_buffer(&Bytes::from_static(b"cd"));
        buffer.write_to_buffer(&Bytes::from_static(b"ef"));
        assert_eq!(buffer.get_buffer().unwrap(), Bytes::from_static(b"abcdef"));

        buffer.clear();
        assert!(buffer.is_empty());
        assert!(buffer.get_buffer().is_none());
        buffer.write_to_buffer(&Bytes::from_static(b"12345678"));
        assert_eq!(buffer.get_buffer().unwrap(), Bytes::from_static(b"12345678"));
        buffer.write_to_buffer(&Bytes::from_static(b"9"));
        assert!(buffer.is_truncated());
        assert!(buffer.get_buffer().is_none());
    }
}
