cd /work/main
target/release/gavel-bench sweep --system http --rates 5000 --seconds 30 --out /tmp/hp/sweep2 > /tmp/hp/sweep2.log 2>&1 &
B=$!
sleep 1
perf record -F 149 --call-graph dwarf,16384 -p $B -o /tmp/hp/drv.perf.data > /tmp/hp/perf2.log 2>&1 &
P=$!
wait $B
kill -INT $P 2>/dev/null; wait $P
echo done
