/*
 * A record reader for Kafka's own console producer (org.apache.kafka.tools.ConsoleProducer,
 * --line-reader Base64LineReader) that sends arbitrary bytes.
 *
 * Why: the console producer's stock LineMessageReader decodes stdin as UTF-8 text and sends
 * each line's String.getBytes(UTF_8), so it cannot send Avro (the single-object marker
 * C3 01 is not valid UTF-8), nor binary garbage, nor a value with a newline in it. Kafka 4.1
 * ships no reader that takes binary or encoded input (kafka-verifiable-producer and
 * kafka-producer-perf-test send text payloads too), so this reader replaces only the
 * line-to-record step; the producer, its configuration and its serializers
 * (ByteArraySerializer) stay Kafka's.
 *
 * One record per line, tab-separated:
 *   PARTITION  KEY  VALUE  [TIMESTAMP]
 * PARTITION a number or "-" (Kafka's partitioner decides), KEY and VALUE standard base64
 * or "-" for null, TIMESTAMP the record's CreateTime in epoch ms (omitted or "-": the
 * producer stamps the wall clock). Written by tests/data/hostile/make_corpus.py.
 */

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.Iterator;
import java.util.Map;
import java.util.NoSuchElementException;

import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.tools.api.RecordReader;

public class Base64LineReader implements RecordReader {
    private String topic;

    @Override
    public void configure(Map<String, ?> props) {
        topic = props.get("topic").toString();
    }

    @Override
    public Iterator<ProducerRecord<byte[], byte[]>> readRecords(InputStream input) {
        BufferedReader lines = new BufferedReader(new InputStreamReader(input, StandardCharsets.US_ASCII));
        return new Iterator<>() {
            private String next = read();

            private String read() {
                try {
                    String line;
                    do {
                        line = lines.readLine();
                    } while (line != null && line.isBlank());
                    return line;
                } catch (IOException e) {
                    throw new UncheckedIOException(e);
                }
            }

            @Override
            public boolean hasNext() {
                return next != null;
            }

            @Override
            public ProducerRecord<byte[], byte[]> next() {
                if (next == null) {
                    throw new NoSuchElementException();
                }
                String[] f = next.split("\t", -1);
                if (f.length < 3 || f.length > 4) {
                    throw new IllegalArgumentException("expected PARTITION KEY VALUE [TIMESTAMP], got: " + next);
                }
                next = read();
                Integer partition = f[0].equals("-") ? null : Integer.valueOf(f[0]);
                Long timestamp = f.length < 4 || f[3].equals("-") ? null : Long.valueOf(f[3]);
                return new ProducerRecord<>(topic, partition, timestamp, bytes(f[1]), bytes(f[2]));
            }
        };
    }

    private static byte[] bytes(String field) {
        return field.equals("-") ? null : Base64.getDecoder().decode(field);
    }
}
