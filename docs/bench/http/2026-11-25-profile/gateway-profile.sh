cd /work/main
target/release/gavel-bench sweep --system http --rates 5000 --seconds 30 --out /tmp/hp/sweep > /tmp/hp/sweep.log 2>&1 &
B=$!
for i in $(seq 1 200); do G=$(pgrep -f 'release/gavel gateway' | head -1); [ -n "$G" ] && break; sleep 0.2; done
echo "gateway pid $G"
perf record -F 149 --call-graph dwarf,16384 -p $G -o /tmp/hp/gw.perf.data > /tmp/hp/perf.log 2>&1 &
P=$!
wait $B
kill -INT $P 2>/dev/null; wait $P
echo done
