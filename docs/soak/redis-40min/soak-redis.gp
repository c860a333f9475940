set terminal pngcairo size 1400,1000 font ",10" noenhanced
set output "soak-redis.png"
set datafile separator ","
set key autotitle columnhead
set key top left
set grid
set xlabel "minutes"
set multiplot layout 3,2 title "tidegate soak, redis store"
set title "load (alerts/s, 2xx)"
plot "soak-redis.csv" using ($1/60):2 with lines title "alerts/s"
set title "latency per request (ms)"
plot "soak-redis.csv" using ($1/60):8 with lines title "p99", "" using ($1/60):7 with lines title "p50"
set title "gateway RSS (MiB)"
plot "soak-redis.csv" using ($1/60):($9/1048576) with lines title "VmRSS"
set title "open file descriptors (left); status-write backlog (right)"
set y2tics
plot "soak-redis.csv" using ($1/60):10 axes x1y1 with lines title "fds", "" using ($1/60):12 axes x1y2 with lines title "status writes pending"
unset y2tics
set title "state entries; storm windows open"
plot "soak-redis.csv" using ($1/60):13 with lines title "state entries", "" using ($1/60):($14*100) with lines title "storm windows open x100"
set title "Redis used_memory (MiB) and keys (thousands)"
plot "soak-redis.csv" using ($1/60):($16/1048576) with lines title "used_memory", "" using ($1/60):($17/1000) with lines title "keys / 1000"
unset multiplot
